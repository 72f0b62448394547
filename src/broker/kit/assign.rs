//! Which partitions of a subscription this consumer owns, where the broker assigns partitions to the
//! members of a group (Kafka): assignments and revocations become stream items, and a settle for a
//! partition that was taken away fails with the reason instead of acking somebody else's message.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use crate::broker::{AckToken, BrokerError, StreamItem};

/// The partitions one consumer holds now.
#[derive(Debug, Default)]
pub struct Assignment {
    owned: Mutex<BTreeSet<u32>>,
}

impl Assignment {
    /// Nothing assigned yet.
    pub fn new() -> Self {
        Assignment::default()
    }

    /// Records newly assigned partitions; the item tells the reader.
    pub fn assign(&self, partitions: &[u32]) -> StreamItem {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner).extend(partitions.iter().copied());
        StreamItem::Assigned { partitions: partitions.to_vec() }
    }

    /// Records partitions taken away; the item tells the reader.
    pub fn revoke(&self, partitions: &[u32]) -> StreamItem {
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        for p in partitions {
            owned.remove(p);
        }
        StreamItem::Revoked { partitions: partitions.to_vec() }
    }

    /// The partitions held now.
    pub fn owned(&self) -> Vec<u32> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }

    /// Refuses a settle for a partition this consumer no longer holds.
    pub fn check(&self, token: &AckToken) -> Result<(), BrokerError> {
        if self.owned.lock().unwrap_or_else(PoisonError::into_inner).contains(&token.partition) {
            Ok(())
        } else {
            Err(BrokerError::Revoked {
                subscription: token.subscription.to_string(),
                partition: token.partition,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Name;

    fn token(partition: u32) -> AckToken {
        AckToken { subscription: Name::new("g").unwrap(), partition, seq: 7, lease: 0, reply: None }
    }

    #[test]
    fn a_settle_for_a_revoked_partition_fails_with_the_reason() {
        let a = Assignment::new();
        assert_eq!(a.assign(&[0, 1, 2]), StreamItem::Assigned { partitions: vec![0, 1, 2] });
        assert!(a.check(&token(1)).is_ok());
        assert_eq!(a.revoke(&[1]), StreamItem::Revoked { partitions: vec![1] });
        assert_eq!(a.owned(), vec![0, 2]);
        let err = a.check(&token(1)).unwrap_err().to_string();
        assert!(err.contains("partition 1 of g was revoked"), "{err}");
        assert!(a.check(&token(3)).is_err());
    }
}
