//! The message header (RFC 4271 §4.1) and whole-message encode/decode.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::reader::Reader;
use super::{
    Afi, Codec, ErrorCode, Family, HEADER_LEN, MARKER, MAX_MESSAGE_LEN, Message, Notification,
    RouteRefresh, Safi, header_error, open, route_refresh_error, update,
};

/// Type octets (RFC 4271 §4.1, RFC 2918 §3).
const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;
const ROUTE_REFRESH: u8 = 5;

fn bad_length(len: u16) -> DecodeError {
    DecodeError::new(
        ErrorCode::MessageHeader,
        header_error::BAD_MESSAGE_LENGTH,
        len.to_be_bytes().to_vec(),
        format!("message length {len} is invalid for its type"),
    )
}

/// Decodes the first message in `buf`, a receive buffer that may hold a partial message
/// or several. Returns the message and the number of bytes it took, `Ok(None)` when more
/// bytes are needed, or the error to close the session with. The header is checked as
/// soon as it is complete, so a bad length is reported without waiting for a body that
/// will never come.
pub fn decode_frame(buf: &[u8], codec: &Codec) -> Result<Option<(Message, usize)>, DecodeError> {
    let mut r = Reader::new(buf);
    let (Some(marker), Some(len), Some(kind)) = (r.array::<16>(), r.u16(), r.u8()) else {
        return Ok(None);
    };
    // RFC 4271 §6.1.
    if marker != MARKER {
        return Err(DecodeError::new(
            ErrorCode::MessageHeader,
            header_error::CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
            "message marker is not all ones",
        ));
    }
    let total = usize::from(len);
    let min = match kind {
        OPEN => 29,
        UPDATE => 23,
        NOTIFICATION => 21,
        KEEPALIVE | ROUTE_REFRESH => HEADER_LEN,
        other => {
            return Err(DecodeError::new(
                ErrorCode::MessageHeader,
                header_error::BAD_MESSAGE_TYPE,
                vec![other],
                format!("unknown message type {other}"),
            ));
        }
    };
    if total < min || total > MAX_MESSAGE_LEN || (kind == KEEPALIVE && total != HEADER_LEN) {
        return Err(bad_length(len));
    }
    let Some(body) = r.take(total - HEADER_LEN) else {
        return Ok(None);
    };
    let message = match kind {
        OPEN => Message::Open(open::decode(body)?),
        UPDATE => Message::Update(update::decode(body, codec)?),
        NOTIFICATION => {
            let mut b = Reader::new(body);
            let (Some(code), Some(subcode)) = (b.u8(), b.u8()) else {
                return Err(bad_length(len));
            };
            Message::Notification(Notification {
                code,
                subcode,
                data: b.rest().to_vec(),
            })
        }
        KEEPALIVE => Message::Keepalive,
        _ => {
            // RFC 2918 §3: AFI, Reserved, SAFI. RFC 7313 §5 names the error for a wrong
            // length and wants the whole message as its data.
            let mut b = Reader::new(body);
            match (b.u16(), b.u8(), b.u8(), b.is_empty()) {
                (Some(afi), Some(_reserved), Some(safi), true) => {
                    Message::RouteRefresh(RouteRefresh {
                        family: Family::new(Afi::from_u16(afi), Safi::from_u8(safi)),
                    })
                }
                _ => {
                    return Err(DecodeError::new(
                        ErrorCode::RouteRefresh,
                        route_refresh_error::INVALID_MESSAGE_LENGTH,
                        buf.get(..total).unwrap_or(buf).to_vec(),
                        "ROUTE-REFRESH body is not 4 octets",
                    ));
                }
            }
        }
    };
    Ok(Some((message, total)))
}

/// Encodes one message into a new buffer.
pub fn encode(message: &Message, codec: &Codec) -> Result<Vec<u8>, EncodeError> {
    let mut out = BytesMut::with_capacity(64);
    encode_into(message, codec, &mut out)?;
    Ok(out.to_vec())
}

/// Appends one message to `out`. On error `out` is left as it was.
pub fn encode_into(
    message: &Message,
    codec: &Codec,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = out.len();
    let result = write_message(message, codec, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_message(
    message: &Message,
    codec: &Codec,
    out: &mut BytesMut,
    start: usize,
) -> Result<(), EncodeError> {
    out.put_slice(&MARKER);
    out.put_u16(0);
    out.put_u8(message.type_code());
    match message {
        Message::Open(o) => open::encode(o, out)?,
        Message::Update(u) => update::encode(u, codec, out)?,
        Message::Notification(n) => {
            out.put_u8(n.code);
            out.put_u8(n.subcode);
            out.put_slice(&n.data);
        }
        Message::Keepalive => {}
        Message::RouteRefresh(rr) => {
            out.put_u16(rr.family.afi.to_u16());
            out.put_u8(0);
            out.put_u8(rr.family.safi.to_u8());
        }
    }
    finish_header(out, start)
}

/// Fills in the header length of the message that starts at `start`, refusing one that
/// is longer than BGP allows.
pub(crate) fn finish_header(out: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    let len = out.len() - start;
    if len > MAX_MESSAGE_LEN {
        return Err(EncodeError::TooLong(len));
    }
    let at = start + MARKER.len();
    if let Some(slot) = out.get_mut(at..at + 2) {
        slot.copy_from_slice(&(len as u16).to_be_bytes());
    }
    Ok(())
}
