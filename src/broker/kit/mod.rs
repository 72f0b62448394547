//! The backend toolkit: what every remote backend shares instead of writing its own. ARCHITECTURE.md
//! "Writing a backend" walks through it.
//!
//! * [`crate::broker::url::BrokerUrl`]: one URL type with typed query options and one redaction policy.
//! * [`backoff`]: one reconnect backoff (100 ms doubling to 5 s) and one reconnect loop that reports
//!   `Disconnected` once and `Reconnected` when back.
//! * [`forward`]: one live forwarder that never waits for a slow reader, counts what it drops and
//!   delivers `Lagged { skipped }` when the reader catches up.
//! * [`tls`]: rustls client settings (system roots plus `?ca=`, or unchecked where asked for).
//! * [`assign`]: partitions assigned to this consumer, so a settle for a revoked one fails clearly.
//! * [`crate::model::TopicInfo::external`] and [`crate::model::SubscriptionInfo::external`]: info of a
//!   broker that is not the engine, where what it cannot say is `None`.

pub mod assign;
pub mod backoff;
pub mod forward;
pub mod tls;

pub use assign::Assignment;
pub use backoff::{Backoff, reconnect};
pub use forward::{Forwarder, Offer};
