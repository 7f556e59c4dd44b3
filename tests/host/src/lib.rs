//! The nested-KVM test host (issue 3).
