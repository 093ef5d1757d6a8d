"""Hardware cost of a QuantSpec *estimated from the spec alone* (until synthesis results exist).

The model is deliberately simple and stated in the sweep report: an ANNA-style engine with
``lanes`` MAC lanes, one DSP per lane when both operands fit a 16x16 multiplier, on-chip memories
in 4-kbit iCE40 EBRs (weights, two feature-map buffers, activation tables).
"""
from __future__ import annotations

import math

from .spec import QuantSpec

EBR_BITS = 4096
DSP_WIDTH = 16


def estimate(spec: QuantSpec, lanes: int = 8) -> dict:
    w_bits = max((l.formats["weight"].width for l in spec.layers if l.kind not in ("rbf", "maxpool")), default=1)
    a_bits = max(l.formats["input"].width for l in spec.layers)
    acc_bits = max((l.formats["acc"].width for l in spec.layers if "acc" in l.formats), default=1)
    fits_dsp = w_bits <= DSP_WIDTH and a_bits <= DSP_WIDTH
    mult_luts = 0 if fits_dsp else w_bits * a_bits
    luts = 500 + lanes * (acc_bits + mult_luts + w_bits + a_bits)
    fmap_bits = 2 * max(l.out_maps * l.out_h * l.out_w * l.out_format.width for l in spec.layers)
    lut_bits = sum(len(l.lut) * l.formats["act"].width for l in spec.layers if l.lut is not None)
    brams = math.ceil(spec.weight_bits() / EBR_BITS) + math.ceil(fmap_bits / EBR_BITS) + math.ceil(lut_bits / EBR_BITS)
    macs = spec.macs()
    return {"hw_cost": "estimate", "est_lanes": lanes, "est_luts": luts, "est_dsps": lanes if fits_dsp else 0,
            "est_brams": brams, "est_cycles_per_image": math.ceil(macs / lanes), "macs_per_image": macs}
