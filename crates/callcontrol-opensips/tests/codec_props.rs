//! Property tests over the request decoder (the same function the
//! `fuzz/` target drives): it never panics, its memory stays bounded, and
//! how the input is split never changes what it decodes.

use callcontrol_core::request::Request;
use callcontrol_opensips::codec::{encode_request, Decoder, MAX_LINE, MAX_LINES};
use callcontrol_opensips::testkit::opensips_init;
use callcontrol_opensips::ProtocolError;
use proptest::prelude::*;

fn decode_in_chunks(input: &[u8], cuts: &[usize]) -> (Vec<Result<Request, ProtocolError>>, usize) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut max_buffered = 0;
    let mut pos = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(input.len());
    for cut in cuts {
        if cut < pos {
            continue;
        }
        d.feed(&input[pos..cut]);
        pos = cut;
        max_buffered = max_buffered.max(d.buffered());
        while let Some(r) = d.decode() {
            out.push(r);
        }
    }
    (out, max_buffered)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        ("[a-z0-9@.-]{1,40}", "[a-z]{1,10}")
            .prop_map(|(c, u)| Request::Init(opensips_init(&c, &u))),
        "[a-z0-9@.-]{1,40}".prop_map(|c| Request::Stop {
            call_id: c.as_str().into()
        }),
        "[a-z0-9@.-]{1,40}".prop_map(|c| Request::Terminate {
            call_id: c.as_str().into()
        }),
        Just(Request::List { user: None }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn splitting_never_changes_the_result(reqs in proptest::collection::vec(request(), 1..8),
                                          cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
        let mut input = Vec::new();
        for r in &reqs {
            input.extend(encode_request(r));
        }
        let (whole, _) = decode_in_chunks(&input, &[]);
        let (split, _) = decode_in_chunks(&input, &cuts);
        prop_assert_eq!(&whole, &split);
        let expected: Vec<_> = reqs.into_iter().map(Ok).collect();
        prop_assert_eq!(whole, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(input in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\n'), Just(b':'), Just(b'\r')], 0..4096),
            cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
        let (_, max) = decode_in_chunks(&input, &cuts);
        prop_assert!(max <= (MAX_LINES + 1) * (MAX_LINE + 2) + input.len().min(4096));
    }

    #[test]
    fn a_valid_request_after_any_garbage_and_an_empty_line_is_decoded(
            garbage in proptest::collection::vec(any::<u8>(), 0..3000),
            call in "[a-z0-9]{1,20}") {
        let mut input = garbage;
        input.extend_from_slice(b"\r\n\r\n");
        let stop = Request::Stop { call_id: call.as_str().into() };
        input.extend(encode_request(&stop));
        let (out, _) = decode_in_chunks(&input, &[]);
        prop_assert_eq!(out.last(), Some(&Ok(stop)));
    }
}

#[test]
fn memory_stays_bounded_under_an_endless_line() {
    let mut d = Decoder::new();
    let chunk = vec![b'x'; 16 * 1024];
    let mut errors = 0;
    for _ in 0..40 {
        d.feed(&chunk);
        while let Some(r) = d.decode() {
            assert!(r.is_err());
            errors += 1;
        }
        assert!(d.buffered() <= MAX_LINE + chunk.len());
    }
    assert_eq!(errors, 1);
}

/// A deterministic corpus of request-like input: commands and keys in any
/// case, both separators, both line ends, blank lines, repeated and unknown
/// keys, lines without `:`, non-ASCII and invalid UTF-8, odd dialog ids.
fn corpus(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut s = seed;
    let mut rnd = move |m: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % m as u64) as usize
    };
    let cmds: &[&[u8]] = &[
        b"init",
        b"INIT",
        b"Start",
        b"stop",
        b"sToP",
        b"debug",
        b"terminate",
        b"TERMINATE",
        b"bogus",
        b"  init ",
        b"init\t",
        b"st\xffop",
        b"",
        b"init x",
    ];
    let keys: &[&[u8]] = &[
        b"ruri",
        b"RURI",
        b"diverter",
        b"sourceip",
        b"callid",
        b"CallID",
        b"from",
        b"fromtag",
        b"prepaid",
        b"call_limit",
        b"call_token",
        b"sip_application",
        b"dialogid",
        b"show",
        b"user",
        b"x",
        b"",
        b" callid ",
        b"call-id",
        b"Sip_Application",
        b"fromtag\xc3\xa9",
    ];
    let vals: &[&[u8]] = &[
        b"c1@h",
        b"",
        b"None",
        b"none",
        b"NONE",
        b"sip:1@x",
        b"11111181033451",
        b"3908:2580",
        b" 12 : 34 ",
        b"abc",
        b"true",
        b"FALSE",
        b"yes",
        b"0",
        b"1",
        b"unknown",
        b"weird",
        b"4294967296",
        b"-1",
        b"007",
        b"sessions",
        b"SESSION",
        b"session",
        b"nothing",
        b"\"A\" <sip:a@b>",
        b"caf\xc3\xa9",
        b"bad\xff",
        b"a:b:c",
        b"  spaced  ",
        b"\xe2\x82",
        b"audio",
        b"18446744073709551616",
        b"12345678901234567890",
    ];
    let seps: &[&[u8]] = &[b": ", b":", b" : ", b":\t", b"  :  "];
    let ends: &[&[u8]] = &[b"\r\n", b"\n", b"\r\n", b" \r\n", b"\r\r\n"];
    (0..n)
        .map(|_| {
            let mut out = Vec::new();
            for _ in 0..1 + rnd(3) {
                if rnd(4) == 0 {
                    out.extend_from_slice([&b"\r\n"[..], b"\n", b"  \r\n", b"\t\n"][rnd(4)]);
                }
                let e = ends[rnd(ends.len())];
                out.extend_from_slice(cmds[rnd(cmds.len())]);
                out.extend_from_slice(e);
                // Mostly the keys a request needs, sometimes anything.
                let n = if rnd(3) == 0 { rnd(14) } else { 2 + rnd(12) };
                for j in 0..n {
                    match rnd(60) {
                        0 => out.extend_from_slice(b"no colon here"),
                        1 => out.extend_from_slice(b"\xff\xfe"),
                        _ if rnd(3) > 0 && j < 11 => {
                            let k: &[&[u8]] = &[
                                b"callid",
                                b"ruri",
                                b"from",
                                b"sourceip",
                                b"diverter",
                                b"show",
                                b"dialogid",
                                b"fromtag",
                                b"prepaid",
                                b"call_limit",
                                b"call_token",
                            ];
                            out.extend_from_slice(k[(j + rnd(2) * rnd(11)) % k.len()]);
                            out.extend_from_slice(seps[rnd(seps.len())]);
                            out.extend_from_slice(vals[rnd(vals.len()).min(rnd(vals.len()))]);
                        }
                        _ => {
                            if rnd(3) == 0 {
                                out.push(b' ');
                            }
                            out.extend_from_slice(keys[rnd(keys.len())]);
                            out.extend_from_slice(seps[rnd(seps.len())]);
                            out.extend_from_slice(vals[rnd(vals.len())]);
                        }
                    }
                    out.extend_from_slice(if rnd(8) == 0 {
                        ends[rnd(ends.len())]
                    } else {
                        e
                    });
                }
                out.extend_from_slice(e);
            }
            out
        })
        .collect()
}

/// Writes what the decoder makes of [`corpus`] to `$CODEC_GOLDEN` (to
/// compare two versions of the decoder).
#[test]
#[ignore]
fn dump_golden() {
    use std::fmt::Write as _;
    let Ok(path) = std::env::var("CODEC_GOLDEN") else {
        return;
    };
    let mut text = String::new();
    for input in corpus(0x9e37_79b9_7f4a_7c15, 50_000) {
        let (out, _) = decode_in_chunks(&input, &[]);
        let _ = writeln!(text, "{out:?}");
        for block in input.split(|&b| b == b'\n') {
            let _ = write!(
                text,
                "{:?};",
                callcontrol_opensips::codec::parse_request(block)
            );
        }
        let _ = writeln!(
            text,
            "{:?}",
            callcontrol_opensips::codec::parse_request(&input)
        );
    }
    std::fs::write(path, text).unwrap();
}
