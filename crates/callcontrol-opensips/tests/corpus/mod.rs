//! The golden corpus of the codec tests, shared by `codec_props.rs` and
//! `codec_equivalence.rs`.

/// A deterministic corpus of request-like input: commands and keys in any
/// case, both separators, both line ends, blank lines, repeated and unknown
/// keys, lines without `:`, non-ASCII and invalid UTF-8, odd dialog ids.
pub fn corpus(seed: u64, n: usize) -> Vec<Vec<u8>> {
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

/// `input` split at `cuts` (each taken modulo `input.len() + 1`, in
/// order), and the rest: one piece per cut, empty where cuts coincide.
pub fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(input.len());
    let mut pos = 0;
    cuts.into_iter()
        .map(|cut| {
            let piece = &input[pos..cut];
            pos = cut;
            piece
        })
        .collect()
}
