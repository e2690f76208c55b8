//! Cutover's read-model engine: everything that keeps read models, whatever their domain.
//!
//! - the declarations of read-model tables and the one writer that turns row changes into
//!   set-based SQL ([`rows`]), and the seam projectors implement ([`projection`]);
//! - the log as its readers see it: stored events ([`event`]), read gap-free ([`log`]), and the
//!   locks that order its writers ([`locks`]);
//! - what a read model goes through: its registry row and rebuild template ([`declarations`],
//!   [`registry`]), rebuilds ([`rebuild`]), verification ([`verify`], of what [`compare`] declares), repair ([`repair`]),
//!   shadow reads and the switch of a domain's read source ([`shadow`], [`read_source`]).
//!
//! It knows no domain: the projectors (`cutover-projections`) declare their tables and how
//! events change them, and the event store (`cutover-core`) runs them inline.

pub mod admin;
pub mod compare;
pub mod declarations;
pub mod event;
pub mod locks;
pub mod log;
pub mod projection;
pub mod read_source;
pub mod rebuild;
pub mod registry;
pub mod repair;
pub mod rows;
pub mod shadow;
pub mod upcast;
pub mod verify;
