#!/usr/bin/env python3
"""Independent oracle for the PSP model's SNP launch digest, driving sev-snp-measure.

Reads one JSON object from stdin:
  {"seed": "<96 hex chars>" (optional),
   "ops": [
     {"op": "normal", "gpa": int, "data": "<hex, multiple of 4096 bytes>"},
     {"op": "zero", "gpa": int, "len": int},
     {"op": "unmeasured", "gpa": int, "len": int},
     {"op": "secrets", "gpa": int},
     {"op": "cpuid", "gpa": int},
     {"op": "vmsa", "data": "<hex, 4096 bytes>"},
     {"op": "vmsa_builder", "mode": "snp"|"sev-es", "ap_eip": int, "vcpu_type": str,
      "guest_features": int, "vmm": "QEMU"|"ec2"|"gce", "vcpus": int}
   ]}
and prints one JSON object to stdout:
  {"ld": "<hex after the last op>", "steps": ["<hex after each op>", ...],
   "vmsa_pages": [["<hex page>", ...] for each vmsa_builder op]}

sev-snp-measure is the PyPI package `sev-snp-measure` (virtee); install it in a venv:
  python3 -m venv VENV && VENV/bin/pip install sev-snp-measure
"""

import json
import sys

from sevsnpmeasure import vcpu_types
from sevsnpmeasure.gctx import GCTX
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vmm_types import VMMType
from sevsnpmeasure.vmsa import VMSA


def main() -> int:
    request = json.load(sys.stdin)
    seed = request.get("seed")
    gctx = GCTX(bytes.fromhex(seed)) if seed else GCTX()
    steps = []
    vmsa_pages = []
    for op in request["ops"]:
        kind = op["op"]
        if kind == "normal":
            gctx.update_normal_pages(op["gpa"], bytes.fromhex(op["data"]))
        elif kind == "zero":
            gctx.update_zero_pages(op["gpa"], op["len"])
        elif kind == "unmeasured":
            gctx.update_unmeasured_pages(op["gpa"], op["len"])
        elif kind == "secrets":
            gctx.update_secrets_page(op["gpa"])
        elif kind == "cpuid":
            gctx.update_cpuid_page(op["gpa"])
        elif kind == "vmsa":
            gctx.update_vmsa_page(bytes.fromhex(op["data"]))
        elif kind == "vmsa_builder":
            mode = {"snp": SevMode.SEV_SNP, "sev-es": SevMode.SEV_ES}[op["mode"]]
            vmsa = VMSA(mode, op["ap_eip"], vcpu_types.CPU_SIGS[op["vcpu_type"]],
                        op["guest_features"], VMMType[op["vmm"]])
            pages = list(vmsa.pages(op["vcpus"]))
            for page in pages:
                gctx.update_vmsa_page(page)
            vmsa_pages.append([page.hex() for page in pages])
        else:
            print(f"unknown op {kind!r}", file=sys.stderr)
            return 2
        steps.append(gctx.hex_ld())
    json.dump({"ld": gctx.hex_ld(), "steps": steps, "vmsa_pages": vmsa_pages}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
