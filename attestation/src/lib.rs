//! Key-broker protocols, client and the reference key broker (issue 7).
