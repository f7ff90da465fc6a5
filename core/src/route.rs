//! Routing a request to an upstream group by Host and path prefix. STUB.

use crate::UpstreamId;

#[derive(Debug, Clone)]
pub struct Router {}

impl Router {
    pub fn new(_config: &crate::Config) -> Router {
        todo!()
    }
    pub fn route(&self, _host: Option<&[u8]>, _path: &[u8]) -> Option<UpstreamId> {
        todo!()
    }
}
