//! Fuzzes the CDRTool rating engine's reply handling: framing a receive
//! buffer, then typing a whole reply as each command's answer. Nothing may
//! panic whatever the engine sends, and a reply is framed within the buffer.
#![no_main]

use callcontrol_rating::cdrtool::codec::{frame_reply, Frame};
use callcontrol_rating::testkit::parse_as_every_reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = match frame_reply(data) {
        Frame::Incomplete => data,
        Frame::Complete { start, end } => {
            assert!(start <= end && end <= data.len());
            &data[start..end]
        }
    };
    parse_as_every_reply(&String::from_utf8_lossy(body));
});
