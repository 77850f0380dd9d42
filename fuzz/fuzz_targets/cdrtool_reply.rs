//! Fuzzes the CDRTool rating engine's reply handling: framing a receive
//! buffer, then typing a whole reply as each command's answer. Nothing may
//! panic whatever the engine sends, and a reply is framed within the buffer.
#![no_main]

use callcontrol_rating::cdrtool::codec::{
    decode_value, frame_reply, parse_add_balance, parse_balance_history, parse_debit_balance,
    parse_get_balance, parse_keepalive, parse_max_session_time, Frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = match frame_reply(data) {
        Frame::Incomplete => data,
        Frame::Complete { start, end } => {
            assert!(start <= end && end <= data.len());
            &data[start..end]
        }
    };
    let text = String::from_utf8_lossy(body);
    let _ = parse_max_session_time(&text);
    let _ = parse_debit_balance(&text);
    let _ = parse_get_balance(&text);
    let _ = parse_add_balance(&text);
    let _ = parse_balance_history(&text);
    let _ = parse_keepalive(&text);
    let _ = decode_value(&text);
});
