//! NOTIFICATION error codes and subcodes (RFC 4271 §4.5 and §6, RFC 4486 for Cease,
//! RFC 7313 for ROUTE-REFRESH), and the RFC 8203 shutdown communication.

use super::Notification;

/// The error code octet of a NOTIFICATION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MessageHeader = 1,
    OpenMessage = 2,
    UpdateMessage = 3,
    HoldTimerExpired = 4,
    FiniteStateMachine = 5,
    Cease = 6,
    RouteRefresh = 7,
}

impl ErrorCode {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => ErrorCode::MessageHeader,
            2 => ErrorCode::OpenMessage,
            3 => ErrorCode::UpdateMessage,
            4 => ErrorCode::HoldTimerExpired,
            5 => ErrorCode::FiniteStateMachine,
            6 => ErrorCode::Cease,
            7 => ErrorCode::RouteRefresh,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MessageHeader => "Message Header Error",
            ErrorCode::OpenMessage => "OPEN Message Error",
            ErrorCode::UpdateMessage => "UPDATE Message Error",
            ErrorCode::HoldTimerExpired => "Hold Timer Expired",
            ErrorCode::FiniteStateMachine => "Finite State Machine Error",
            ErrorCode::Cease => "Cease",
            ErrorCode::RouteRefresh => "ROUTE-REFRESH Message Error",
        }
    }
}

/// Subcodes of Message Header Error (RFC 4271 §4.5).
pub mod header_error {
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;
}

/// Subcodes of OPEN Message Error (RFC 4271 §4.5, RFC 5492 §5).
pub mod open_error {
    pub const UNSUPPORTED_VERSION_NUMBER: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
}

/// Subcodes of UPDATE Message Error (RFC 4271 §4.5).
pub mod update_error {
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
    pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;
}

/// Subcodes of Finite State Machine Error (RFC 6608).
pub mod fsm_error {
    pub const UNSPECIFIED: u8 = 0;
    pub const UNEXPECTED_MESSAGE_IN_OPENSENT: u8 = 1;
    pub const UNEXPECTED_MESSAGE_IN_OPENCONFIRM: u8 = 2;
    pub const UNEXPECTED_MESSAGE_IN_ESTABLISHED: u8 = 3;
}

/// Subcodes of Cease (RFC 4486 §4).
pub mod cease {
    pub const MAXIMUM_PREFIXES_REACHED: u8 = 1;
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
    pub const OUT_OF_RESOURCES: u8 = 8;
}

/// Subcodes of ROUTE-REFRESH Message Error (RFC 7313 §5).
pub mod route_refresh_error {
    pub const INVALID_MESSAGE_LENGTH: u8 = 1;
}

impl Notification {
    pub fn new(code: ErrorCode, subcode: u8, data: Vec<u8>) -> Self {
        Notification {
            code: code as u8,
            subcode,
            data,
        }
    }

    /// A Cease with no data.
    pub fn cease(subcode: u8) -> Self {
        Notification::new(ErrorCode::Cease, subcode, Vec::new())
    }

    /// An Administrative Shutdown or Reset carrying a shutdown communication (RFC 8203):
    /// a length octet and at most 128 octets of UTF-8, cut on a character boundary.
    pub fn cease_with_message(subcode: u8, message: &str) -> Self {
        let mut end = message.len().min(128);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = &message.as_bytes()[..end];
        let mut data = Vec::with_capacity(1 + text.len());
        data.push(text.len() as u8);
        data.extend_from_slice(text);
        Notification::new(ErrorCode::Cease, subcode, data)
    }

    pub fn hold_timer_expired() -> Self {
        Notification::new(ErrorCode::HoldTimerExpired, 0, Vec::new())
    }

    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u8(self.code)
    }

    /// The RFC 8203 shutdown communication, if this is an Administrative Shutdown or
    /// Reset that carries a well-formed one.
    pub fn shutdown_message(&self) -> Option<&str> {
        if self.code != ErrorCode::Cease as u8
            || !matches!(
                self.subcode,
                cease::ADMINISTRATIVE_SHUTDOWN | cease::ADMINISTRATIVE_RESET
            )
        {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        let text = rest.get(..usize::from(len))?;
        std::str::from_utf8(text).ok()
    }

    /// A human name for the subcode, where we know one.
    pub fn subcode_name(&self) -> Option<&'static str> {
        let name = match (ErrorCode::from_u8(self.code)?, self.subcode) {
            (ErrorCode::MessageHeader, header_error::CONNECTION_NOT_SYNCHRONIZED) => {
                "Connection Not Synchronized"
            }
            (ErrorCode::MessageHeader, header_error::BAD_MESSAGE_LENGTH) => "Bad Message Length",
            (ErrorCode::MessageHeader, header_error::BAD_MESSAGE_TYPE) => "Bad Message Type",
            (ErrorCode::OpenMessage, open_error::UNSUPPORTED_VERSION_NUMBER) => {
                "Unsupported Version Number"
            }
            (ErrorCode::OpenMessage, open_error::BAD_PEER_AS) => "Bad Peer AS",
            (ErrorCode::OpenMessage, open_error::BAD_BGP_IDENTIFIER) => "Bad BGP Identifier",
            (ErrorCode::OpenMessage, open_error::UNSUPPORTED_OPTIONAL_PARAMETER) => {
                "Unsupported Optional Parameter"
            }
            (ErrorCode::OpenMessage, open_error::UNACCEPTABLE_HOLD_TIME) => {
                "Unacceptable Hold Time"
            }
            (ErrorCode::OpenMessage, open_error::UNSUPPORTED_CAPABILITY) => {
                "Unsupported Capability"
            }
            (ErrorCode::UpdateMessage, update_error::MALFORMED_ATTRIBUTE_LIST) => {
                "Malformed Attribute List"
            }
            (ErrorCode::UpdateMessage, update_error::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE) => {
                "Unrecognized Well-known Attribute"
            }
            (ErrorCode::UpdateMessage, update_error::MISSING_WELL_KNOWN_ATTRIBUTE) => {
                "Missing Well-known Attribute"
            }
            (ErrorCode::UpdateMessage, update_error::ATTRIBUTE_FLAGS_ERROR) => {
                "Attribute Flags Error"
            }
            (ErrorCode::UpdateMessage, update_error::ATTRIBUTE_LENGTH_ERROR) => {
                "Attribute Length Error"
            }
            (ErrorCode::UpdateMessage, update_error::INVALID_ORIGIN_ATTRIBUTE) => {
                "Invalid ORIGIN Attribute"
            }
            (ErrorCode::UpdateMessage, update_error::INVALID_NEXT_HOP_ATTRIBUTE) => {
                "Invalid NEXT_HOP Attribute"
            }
            (ErrorCode::UpdateMessage, update_error::OPTIONAL_ATTRIBUTE_ERROR) => {
                "Optional Attribute Error"
            }
            (ErrorCode::UpdateMessage, update_error::INVALID_NETWORK_FIELD) => {
                "Invalid Network Field"
            }
            (ErrorCode::UpdateMessage, update_error::MALFORMED_AS_PATH) => "Malformed AS_PATH",
            (ErrorCode::Cease, cease::MAXIMUM_PREFIXES_REACHED) => {
                "Maximum Number of Prefixes Reached"
            }
            (ErrorCode::Cease, cease::ADMINISTRATIVE_SHUTDOWN) => "Administrative Shutdown",
            (ErrorCode::Cease, cease::PEER_DECONFIGURED) => "Peer De-configured",
            (ErrorCode::Cease, cease::ADMINISTRATIVE_RESET) => "Administrative Reset",
            (ErrorCode::Cease, cease::CONNECTION_REJECTED) => "Connection Rejected",
            (ErrorCode::Cease, cease::OTHER_CONFIGURATION_CHANGE) => "Other Configuration Change",
            (ErrorCode::Cease, cease::CONNECTION_COLLISION_RESOLUTION) => {
                "Connection Collision Resolution"
            }
            (ErrorCode::Cease, cease::OUT_OF_RESOURCES) => "Out of Resources",
            (ErrorCode::RouteRefresh, route_refresh_error::INVALID_MESSAGE_LENGTH) => {
                "Invalid Message Length"
            }
            _ => return None,
        };
        Some(name)
    }
}

/// `Cease/Administrative Shutdown ("maintenance")`, `UPDATE Message Error/Malformed AS_PATH`,
/// or the raw numbers for codes we do not know: the form status output shows.
impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error_code() {
            Some(code) => f.write_str(code.name())?,
            None => write!(f, "error code {}", self.code)?,
        }
        match self.subcode_name() {
            Some(name) => write!(f, "/{name}")?,
            None if self.subcode != 0 => write!(f, "/subcode {}", self.subcode)?,
            None => {}
        }
        if let Some(message) = self.shutdown_message() {
            write!(f, " ({message:?})")?;
        }
        Ok(())
    }
}
