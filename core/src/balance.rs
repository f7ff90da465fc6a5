//! Choosing a server within an upstream group, and passive health. STUB: the API is the contract.

use crate::Time;
use crate::config::UpstreamConfig;

#[derive(Debug)]
pub struct Balancer {}

impl Balancer {
    pub fn new(_cfg: &UpstreamConfig) -> Balancer {
        todo!()
    }
    pub fn pick(&mut self, _now: Time, _hash: u64, _tried: u64) -> Option<usize> {
        todo!()
    }
    pub fn acquire(&mut self, _server: usize) {
        todo!()
    }
    pub fn release(&mut self, _server: usize) {
        todo!()
    }
    pub fn failure(&mut self, _now: Time, _server: usize) {
        todo!()
    }
    pub fn success(&mut self, _now: Time, _server: usize) {
        todo!()
    }
    pub fn is_up(&self, _now: Time, _server: usize) -> bool {
        todo!()
    }
    pub fn active(&self, _server: usize) -> u32 {
        todo!()
    }
}
