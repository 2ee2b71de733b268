//! OPEN messages and capabilities (RFC 4271 §4.2, RFC 5492).

use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::reader::Reader;
use super::{
    AS_TRANS, Afi, BGP_VERSION, Capability, ErrorCode, Family, GracefulRestart,
    GracefulRestartFamily, Open, Safi, open_error,
};

impl Open {
    /// The AS from the 4-octet AS capability, if the sender advertised it (RFC 6793).
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
    }

    /// The families the sender advertised with the Multiprotocol capability. RFC 4760 §8:
    /// a speaker that advertises none supports IPv4 unicast only.
    pub fn families(&self) -> Vec<Family> {
        let mut families: Vec<Family> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        if families.is_empty() {
            families.push(Family::IPV4_UNICAST);
        }
        families
    }

    pub fn route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }
}

/// Optional parameter type for capabilities (RFC 5492 §4).
const PARAM_CAPABILITIES: u8 = 2;

mod cap_code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
}

fn open_err(
    subcode: u8,
    data: Vec<u8>,
    reason: impl Into<std::borrow::Cow<'static, str>>,
) -> DecodeError {
    DecodeError::new(ErrorCode::OpenMessage, subcode, data, reason)
}

/// RFC 4271 §6.2: a recognised optional parameter that is malformed gets subcode 0.
fn unspecific(reason: &'static str) -> DecodeError {
    open_err(0, Vec::new(), reason)
}

/// Decodes the body of an OPEN and checks what can be checked without knowing the peer
/// (RFC 4271 §6.2): version, hold time, BGP identifier, AS 0 (RFC 7607), and the
/// optional parameters. [`Open::validate_peer`] does the rest.
pub(crate) fn decode(body: &[u8]) -> Result<Open, DecodeError> {
    const SHORT: &str = "OPEN is truncated";
    let mut r = Reader::new(body);
    let version = r.u8().ok_or_else(|| unspecific(SHORT))?;
    if version != BGP_VERSION {
        // The data is the largest version we support, as a 2-octet number.
        return Err(open_err(
            open_error::UNSUPPORTED_VERSION_NUMBER,
            u16::from(BGP_VERSION).to_be_bytes().to_vec(),
            format!("BGP version {version} is not supported"),
        ));
    }
    let as2 = r.u16().ok_or_else(|| unspecific(SHORT))?;
    let hold_time = r.u16().ok_or_else(|| unspecific(SHORT))?;
    let bgp_id = Ipv4Addr::from(r.array::<4>().ok_or_else(|| unspecific(SHORT))?);
    let mut opt_len = usize::from(r.u8().ok_or_else(|| unspecific(SHORT))?);

    // RFC 9072: a Non-Ext OP Len and Non-Ext OP Type of 255 announce 2-octet lengths.
    let extended = opt_len == 255 && r.rest().first() == Some(&255);
    if extended {
        r.u8().ok_or_else(|| unspecific(SHORT))?;
        opt_len = usize::from(r.u16().ok_or_else(|| unspecific(SHORT))?);
    }
    let params = r
        .take(opt_len)
        .ok_or_else(|| unspecific("optional parameters overrun the OPEN"))?;
    if !r.is_empty() {
        return Err(unspecific("bytes after the optional parameters"));
    }

    let mut capabilities = Vec::new();
    let mut p = Reader::new(params);
    while !p.is_empty() {
        let kind = p
            .u8()
            .ok_or_else(|| unspecific("truncated optional parameter"))?;
        let len = if extended {
            p.u16().map(usize::from)
        } else {
            p.u8().map(usize::from)
        };
        let value = len
            .and_then(|len| p.take(len))
            .ok_or_else(|| unspecific("optional parameter overruns its field"))?;
        if kind != PARAM_CAPABILITIES {
            return Err(open_err(
                open_error::UNSUPPORTED_OPTIONAL_PARAMETER,
                Vec::new(),
                format!("optional parameter type {kind} is not supported"),
            ));
        }
        read_capabilities(value, &mut capabilities)?;
    }

    let mut open = Open {
        version,
        my_as: u32::from(as2),
        hold_time,
        bgp_id,
        capabilities,
    };
    if let Some(asn) = open.four_octet_as() {
        open.my_as = asn;
    }
    if open.my_as == 0 {
        return Err(open_err(
            open_error::BAD_PEER_AS,
            Vec::new(),
            "peer AS is 0 (RFC 7607)",
        ));
    }
    // RFC 4271 §4.2: zero or at least three seconds.
    if hold_time == 1 || hold_time == 2 {
        return Err(open_err(
            open_error::UNACCEPTABLE_HOLD_TIME,
            Vec::new(),
            format!("hold time {hold_time} s is neither 0 nor at least 3 s"),
        ));
    }
    // RFC 6286 §2.2: any non-zero value is a valid identifier.
    if bgp_id.is_unspecified() {
        return Err(open_err(
            open_error::BAD_BGP_IDENTIFIER,
            Vec::new(),
            "BGP identifier is 0.0.0.0",
        ));
    }
    Ok(open)
}

fn read_capabilities(buf: &[u8], out: &mut Vec<Capability>) -> Result<(), DecodeError> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (Some(code), Some(len)) = (r.u8(), r.u8()) else {
            return Err(unspecific("truncated capability"));
        };
        let value = r
            .take(usize::from(len))
            .ok_or_else(|| unspecific("capability overruns its parameter"))?;
        let mut v = Reader::new(value);
        let cap = match code {
            cap_code::MULTIPROTOCOL => {
                let (Some(afi), Some(_reserved), Some(safi), true) =
                    (v.u16(), v.u8(), v.u8(), value.len() == 4)
                else {
                    return Err(unspecific("Multiprotocol capability is not 4 octets"));
                };
                Capability::Multiprotocol(Family::new(Afi::from_u16(afi), Safi::from_u8(safi)))
            }
            cap_code::ROUTE_REFRESH => {
                if !value.is_empty() {
                    return Err(unspecific("Route Refresh capability is not empty"));
                }
                Capability::RouteRefresh
            }
            cap_code::FOUR_OCTET_AS => {
                let (Some(asn), true) = (v.u32(), value.len() == 4) else {
                    return Err(unspecific("4-octet AS capability is not 4 octets"));
                };
                Capability::FourOctetAs(asn)
            }
            cap_code::GRACEFUL_RESTART => {
                // RFC 4724 §3: 4 bits of flags and a 12-bit restart time, then 4 octets
                // per family.
                let Some(head) = v.u16() else {
                    return Err(unspecific("Graceful Restart capability is truncated"));
                };
                if !v.remaining().is_multiple_of(4) {
                    return Err(unspecific(
                        "Graceful Restart capability has a partial family",
                    ));
                }
                let mut families = Vec::with_capacity(v.remaining() / 4);
                while let (Some(afi), Some(safi), Some(flags)) = (v.u16(), v.u8(), v.u8()) {
                    families.push(GracefulRestartFamily {
                        family: Family::new(Afi::from_u16(afi), Safi::from_u8(safi)),
                        forwarding_preserved: flags & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart(GracefulRestart {
                    restart_state: head & 0x8000 != 0,
                    notification: head & 0x4000 != 0,
                    restart_time: head & 0x0fff,
                    families,
                })
            }
            _ => Capability::Unknown {
                code,
                value: value.to_vec(),
            },
        };
        out.push(cap);
    }
    Ok(())
}

fn write_capability(cap: &Capability, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match cap {
        Capability::Multiprotocol(f) => {
            out.extend_from_slice(&[cap_code::MULTIPROTOCOL, 4]);
            out.extend_from_slice(&f.afi.to_u16().to_be_bytes());
            out.push(0);
            out.push(f.safi.to_u8());
        }
        Capability::RouteRefresh => out.extend_from_slice(&[cap_code::ROUTE_REFRESH, 0]),
        Capability::FourOctetAs(asn) => {
            out.extend_from_slice(&[cap_code::FOUR_OCTET_AS, 4]);
            out.extend_from_slice(&asn.to_be_bytes());
        }
        Capability::GracefulRestart(gr) => {
            let len = 2 + 4 * gr.families.len();
            let len8 = u8::try_from(len).map_err(|_| EncodeError::OpenTooLong(len))?;
            out.extend_from_slice(&[cap_code::GRACEFUL_RESTART, len8]);
            let mut head = gr.restart_time.min(0x0fff);
            if gr.restart_state {
                head |= 0x8000;
            }
            if gr.notification {
                head |= 0x4000;
            }
            out.extend_from_slice(&head.to_be_bytes());
            for f in &gr.families {
                out.extend_from_slice(&f.family.afi.to_u16().to_be_bytes());
                out.push(f.family.safi.to_u8());
                out.push(if f.forwarding_preserved { 0x80 } else { 0 });
            }
        }
        Capability::Unknown { code, value } => {
            let len8 =
                u8::try_from(value.len()).map_err(|_| EncodeError::OpenTooLong(value.len()))?;
            out.extend_from_slice(&[*code, len8]);
            out.extend_from_slice(value);
        }
    }
    Ok(())
}

/// Writes the body of an OPEN. All capabilities go in Capabilities parameters of at most
/// 255 octets each; the whole parameter field must fit its one-octet length (we do not
/// send RFC 9072 extended parameters, which not every peer understands).
pub(crate) fn encode(open: &Open, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u8(open.version);
    out.put_u16(u16::try_from(open.my_as).unwrap_or(AS_TRANS));
    out.put_u16(open.hold_time);
    out.put_slice(&open.bgp_id.octets());

    let mut params = Vec::new();
    let mut param = Vec::new();
    let mut cap = Vec::new();
    for c in &open.capabilities {
        cap.clear();
        write_capability(c, &mut cap)?;
        if param.len() + cap.len() > 255 {
            flush_param(&mut params, &mut param);
        }
        if cap.len() > 255 {
            return Err(EncodeError::OpenTooLong(cap.len()));
        }
        param.extend_from_slice(&cap);
    }
    flush_param(&mut params, &mut param);
    let len = u8::try_from(params.len()).map_err(|_| EncodeError::OpenTooLong(params.len()))?;
    out.put_u8(len);
    out.put_slice(&params);
    Ok(())
}

fn flush_param(params: &mut Vec<u8>, param: &mut Vec<u8>) {
    if param.is_empty() {
        return;
    }
    params.push(PARAM_CAPABILITIES);
    params.push(param.len() as u8);
    params.append(param);
}

impl Open {
    /// The OPEN tortie sends: version 4, AS_TRANS in the 2-octet field when needed, and
    /// the capabilities given (the caller decides which; see [`Capability`]).
    pub fn new(
        my_as: u32,
        hold_time: u16,
        bgp_id: Ipv4Addr,
        capabilities: Vec<Capability>,
    ) -> Self {
        Open {
            version: BGP_VERSION,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The checks of RFC 4271 §6.2 that need our configuration: the peer's AS must be
    /// the one configured, and an internal peer must not share our BGP identifier
    /// (RFC 6286 §2.1).
    pub fn validate_peer(
        &self,
        expected_as: u32,
        local_as: u32,
        local_id: Ipv4Addr,
    ) -> Result<(), DecodeError> {
        if self.my_as != expected_as {
            return Err(open_err(
                open_error::BAD_PEER_AS,
                Vec::new(),
                format!("peer AS is {}, configured {expected_as}", self.my_as),
            ));
        }
        if self.my_as == local_as && self.bgp_id == local_id {
            return Err(open_err(
                open_error::BAD_BGP_IDENTIFIER,
                Vec::new(),
                format!("internal peer has our own BGP identifier {local_id}"),
            ));
        }
        Ok(())
    }
}
