//! Validated VM configuration handed from the C API to the VMM (issue 2).
