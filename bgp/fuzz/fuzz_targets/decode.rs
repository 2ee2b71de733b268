//! Feeds arbitrary bytes to the BGP decoder as a receive stream.
//!
//! The first byte picks the session codec (4-octet AS or not, internal or external peer);
//! the rest is read message by message, as the speaker does. Beyond "never panics", every
//! message that decodes must encode again, and with a 4-octet AS codec (where no AS4_PATH
//! merge can lose information) decode back to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tortie_bgp::wire::{Codec, EncodeError, Message, UpdateStatus, decode_frame, encode};

/// What decoding twice legitimately changes: the RFC 7606 status of the first pass, and
/// the order of unknown attributes, which the encoder sorts by type code.
fn normalize(m: &mut Message) {
    if let Message::Update(u) = m {
        u.status = UpdateStatus::Ok;
        u.attributes.unknown.sort_by_key(|a| a.code);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut stream)) = data.split_first() else {
        return;
    };
    let codec = Codec {
        four_octet_as: selector & 1 != 0,
        external: selector & 2 != 0,
    };
    while let Ok(Some((message, used))) = decode_frame(stream, &codec) {
        assert!(
            used >= 19 && used <= stream.len(),
            "consumed {used} of {}",
            stream.len()
        );
        stream = &stream[used..];
        match encode(&message, &codec) {
            Ok(bytes) => {
                if codec.four_octet_as {
                    let again = match decode_frame(&bytes, &codec) {
                        Ok(Some((m, n))) if n == bytes.len() => m,
                        other => panic!("re-encoded {message:?} decodes as {other:?}"),
                    };
                    let (mut a, mut b) = (message, again);
                    normalize(&mut a);
                    normalize(&mut b);
                    assert_eq!(a, b, "decode(encode(m)) != m");
                }
            }
            // An OPEN that used RFC 9072 extended parameters can be too long for the
            // classic form the encoder writes.
            Err(EncodeError::OpenTooLong(_)) if matches!(message, Message::Open(_)) => {}
            Err(e) => panic!("decoded {message:?} does not encode: {e}"),
        }
    }
});
