//! Connection-header and hop-by-hop rules (RFC 9110 §7.6.1). STUB.
