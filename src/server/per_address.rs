//! Counting what each caller address holds open (connections to the edge,
//! requests in flight to a tunnel) against a limit, so that no one caller
//! can take every place. Addresses count as [`counted_as`] says: an IPv6
//! /64 as one.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;

use super::proxies::counted_as;

/// Places held per caller address, at most `max` each.
#[derive(Debug)]
pub struct PerAddress {
    max: usize,
    open: DashMap<IpAddr, usize>,
}

impl PerAddress {
    /// At most `max` places per address.
    pub fn new(max: usize) -> Self {
        Self { max, open: DashMap::new() }
    }

    /// A place for one more from `ip`; `None` at the limit.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressPlace> {
        let addr = counted_as(ip);
        let mut count = self.open.entry(addr).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        drop(count);
        Some(AddressPlace { table: self.clone(), addr })
    }
}

/// One place under a [`PerAddress`]; given back when dropped.
#[derive(Debug)]
pub struct AddressPlace {
    table: Arc<PerAddress>,
    addr: IpAddr,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        if let Some(mut count) = self.table.open.get_mut(&self.addr) {
            *count = count.saturating_sub(1);
        }
        self.table.open.remove_if(&self.addr, |_, count| *count == 0);
    }
}
