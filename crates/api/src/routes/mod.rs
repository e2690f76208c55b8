//! The resources of the API; each module exposes `router()` and they are merged in
//! [`crate::app`].

pub mod collections;
pub mod health;
