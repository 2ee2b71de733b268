//! Decode and encode errors.

use std::borrow::Cow;

use super::{ErrorCode, Notification};

/// A message that cannot be accepted. The session must be closed after sending
/// [`DecodeError::notification`] (RFC 4271 §6; for UPDATEs, RFC 7606 "session reset").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (sending NOTIFICATION {}/{})", notification.code, notification.subcode)]
pub struct DecodeError {
    pub notification: Notification,
    pub reason: Cow<'static, str>,
}

impl DecodeError {
    pub(crate) fn new(
        code: ErrorCode,
        subcode: u8,
        data: Vec<u8>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        DecodeError {
            notification: Notification::new(code, subcode, data),
            reason: reason.into(),
        }
    }

    /// The NOTIFICATION to send before closing the session.
    pub fn notification(&self) -> &Notification {
        &self.notification
    }
}

/// One malformed attribute that RFC 7606 let us survive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeIssue {
    /// The attribute type code (0 when the damage is in the attribute list itself).
    pub code: u8,
    pub reason: &'static str,
}

impl std::fmt::Display for AttributeIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attribute {}: {}", self.code, self.reason)
    }
}

/// A message that cannot be written as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message would be {0} bytes, more than the 4096 BGP allows")]
    TooLong(usize),
    #[error("{0} prefixes need MP_REACH_NLRI with a next hop of that family")]
    MissingNextHop(&'static str),
    #[error("IPv4 NLRI needs the NEXT_HOP attribute")]
    MissingIpv4NextHop,
    #[error("an AS_PATH segment must hold 1 to 255 AS numbers, not {0}")]
    BadSegment(usize),
    #[error("an optional parameter or capability of {0} bytes does not fit its length octet")]
    OpenTooLong(usize),
    #[error("{0} cannot carry prefixes of another family")]
    FamilyMismatch(&'static str),
}
