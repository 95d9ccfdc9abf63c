//! Admission by KV memory: the ledger of reservations against `--kv-memory`.
//!
//! What a request reserves is [`lava_run::bytes::KvBytes::reservation`]: per
//! KV head of every layer, the tokens its cache can hold at the end of its
//! generation, in bytes of K and V as the server stores them (`--kv-dtype`).
//!
//! While a compressing cache prefills one chunk of `T` tokens it holds up to
//! `B + T` tokens per head; only one sequence prefills at a time, and
//! `/metrics` reports the caches' real allocated bytes next to the reserved
//! ones.

/// The reservations held against the limit.
#[derive(Debug, Clone)]
pub struct Ledger {
    limit: u64,
    reserved: u64,
}

impl Ledger {
    /// An empty ledger with `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit, reserved: 0 }
    }

    /// The limit, bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Whether `bytes` more fit now.
    pub fn fits(&self, bytes: u64) -> bool {
        self.reserved.saturating_add(bytes) <= self.limit
    }

    /// Takes `bytes` if they fit.
    pub fn try_reserve(&mut self, bytes: u64) -> bool {
        let ok = self.fits(bytes);
        if ok {
            self.reserved += bytes;
        }
        ok
    }

    /// Gives `bytes` back.
    pub fn release(&mut self, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_admits_up_to_its_limit() {
        let full = 46_080 * 4160;
        let mut l = Ledger::new(3 * full);
        assert!(l.try_reserve(full) && l.try_reserve(full) && l.try_reserve(full));
        assert!(!l.try_reserve(1));
        l.release(full);
        assert!(l.fits(full) && !l.fits(full + 1));
        assert_eq!((l.limit(), l.reserved()), (3 * full, 2 * full));
    }
}
