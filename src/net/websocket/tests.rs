use super::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: FIN as given, masked with `MASK` unless `masked` is false.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut frame = Vec::new();
    push_client_frame(&mut frame, fin, opcode, payload, masked.then_some(MASK));
    frame
}

fn binary(payload: &[u8]) -> Vec<u8> {
    client_frame(true, opcode::BINARY, payload, true)
}

/// Feeds `input` in pieces of `piece` bytes through a decoder with an output buffer of `out`
/// bytes, as a reader would; returns the MQTT bytes and the events, or the first violation.
fn run(input: &[u8], piece: usize, out: usize) -> Result<(Vec<u8>, Vec<Event>), Violation> {
    let mut decoder = Decoder::new(1 << 20);
    let (mut data, mut events, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    let mut buf = vec![0u8; out];
    for chunk in input.chunks(piece) {
        pending.extend_from_slice(chunk);
        loop {
            let step = decoder.decode(&pending, &mut buf)?;
            assert!(step.consumed <= pending.len() && step.written <= buf.len());
            pending.drain(..step.consumed);
            data.extend_from_slice(&buf[..step.written]);
            let progressed = step.consumed > 0 || step.event.is_some();
            events.extend(step.event);
            if !progressed {
                break;
            }
        }
    }
    assert!(pending.len() < 14, "left over: {pending:?}");
    Ok((data, events))
}

#[test]
fn rfc6455_1_3_accept_key_of_the_sample_handshake() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

fn upgrade_request() -> Request {
    Request {
        method: "GET".into(),
        path: "/mqtt".into(),
        headers: vec![
            ("host".into(), "localhost".into()),
            ("upgrade".into(), "websocket".into()),
            ("connection".into(), "keep-alive, Upgrade".into()),
            (
                "sec-websocket-key".into(),
                "dGhlIHNhbXBsZSBub25jZQ==".into(),
            ),
            ("sec-websocket-version".into(), "13".into()),
            ("sec-websocket-protocol".into(), "mqttv3.1, mqtt".into()),
        ],
        ..Request::default()
    }
}

fn without(request: &Request, name: &str) -> Request {
    let mut request = request.clone();
    request.headers.retain(|(n, _)| n != name);
    request
}

#[test]
fn an_upgrade_with_mqtt_offered_gets_101_the_accept_key_and_mqtt() {
    let response = handshake(&upgrade_request(), "/mqtt").unwrap();
    assert_eq!(response.status, 101);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(header("Sec-WebSocket-Protocol"), Some("mqtt"));
    let mut older = upgrade_request();
    older.headers[5].1 = "mqttv3.1".into();
    let response = handshake(&older, "/mqtt").unwrap();
    assert!(response
        .headers
        .contains(&("Sec-WebSocket-Protocol".into(), "mqttv3.1".into())));
}

#[test]
fn bad_handshakes_are_refused_with_their_status() {
    let request = upgrade_request();
    assert_eq!(handshake(&request, "/ws").unwrap_err().status, 404);
    let no_key = without(&request, "sec-websocket-key");
    assert_eq!(handshake(&no_key, "/mqtt").unwrap_err().status, 400);
    let no_mqtt = without(&request, "sec-websocket-protocol");
    assert_eq!(handshake(&no_mqtt, "/mqtt").unwrap_err().status, 400);
    let mut other = request.clone();
    other.headers[5].1 = "chat, superchat".into();
    assert_eq!(handshake(&other, "/mqtt").unwrap_err().status, 400);
    let mut short_key = request.clone();
    short_key.headers[3].1 = "c2hvcnQ=".into();
    assert_eq!(handshake(&short_key, "/mqtt").unwrap_err().status, 400);
    let mut version = request.clone();
    version.headers[4].1 = "8".into();
    let refused = handshake(&version, "/mqtt").unwrap_err();
    assert_eq!(refused.status, 426);
    assert!(refused
        .headers
        .contains(&("Sec-WebSocket-Version".into(), "13".into())));
    let mut post = request.clone();
    post.method = "POST".into();
    assert_eq!(handshake(&post, "/mqtt").unwrap_err().status, 400);
    assert!(!is_upgrade(&without(&request, "upgrade")));
}

#[test]
fn server_frame_headers_use_the_shortest_length() {
    assert_eq!(
        frame_header(opcode::BINARY, 5),
        ([0x82, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2)
    );
    let (h, n) = frame_header(opcode::BINARY, 300);
    assert_eq!(&h[..n], &[0x82, 126, 1, 44]);
    let (h, n) = frame_header(opcode::BINARY, 70_000);
    assert_eq!(&h[..n], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    assert_eq!(close_frame(1009), vec![0x88, 2, 0x03, 0xF1]);
}

#[test]
fn several_packets_in_one_frame_and_one_packet_over_three_frames() {
    let packets = b"\xc0\x00\xc0\x00\xc0\x00".to_vec(); // three PINGREQs
    let (data, events) = run(&binary(&packets), 1 << 10, 64).unwrap();
    assert_eq!((data, events), (packets.clone(), vec![]));
    let publish = b"\x30\x07\x00\x01tpay!!".to_vec();
    let mut input = client_frame(false, opcode::BINARY, &publish[..2], true);
    input.extend(client_frame(
        false,
        opcode::CONTINUATION,
        &publish[2..5],
        true,
    ));
    input.extend(client_frame(
        true,
        opcode::CONTINUATION,
        &publish[5..],
        true,
    ));
    input.extend(binary(b"\xc0\x00"));
    let mut expected = publish.clone();
    expected.extend_from_slice(b"\xc0\x00");
    for piece in [1, 2, 3, 7, 1 << 10] {
        for out in [1, 3, 64] {
            assert_eq!(
                run(&input, piece, out).unwrap().0,
                expected,
                "{piece} {out}"
            );
        }
    }
}

#[test]
fn long_frames_unmask_across_reads_with_16_and_64_bit_lengths() {
    for len in [126, 300, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let (data, _) = run(&binary(&payload), 1000, 4096).unwrap();
        assert_eq!(data, payload);
    }
}

#[test]
fn ping_pong_and_close_become_events_between_data() {
    let mut input = client_frame(false, opcode::BINARY, b"\xc0", true);
    input.extend(client_frame(true, opcode::PING, b"hi", true));
    input.extend(client_frame(true, opcode::CONTINUATION, b"\x00", true));
    input.extend(client_frame(true, opcode::PONG, b"", true));
    input.extend(client_frame(
        true,
        opcode::CLOSE,
        &1000u16.to_be_bytes(),
        true,
    ));
    let (data, events) = run(&input, 3, 64).unwrap();
    assert_eq!(data, b"\xc0\x00");
    assert_eq!(
        events,
        vec![
            Event::Ping(b"hi".to_vec()),
            Event::Pong,
            Event::Close(Some(1000))
        ]
    );
    let (_, events) = run(&client_frame(true, opcode::CLOSE, b"", true), 1, 8).unwrap();
    assert_eq!(events, vec![Event::Close(None)]);
}

fn refusal(input: &[u8]) -> u16 {
    run(input, 1 << 10, 64).unwrap_err().code
}

#[test]
fn frames_breaking_rfc6455_close_with_1002() {
    assert_eq!(
        refusal(&client_frame(true, opcode::BINARY, b"x", false)),
        1002
    );
    assert_eq!(
        refusal(&client_frame(true, opcode::CONTINUATION, b"x", true)),
        1002
    );
    assert_eq!(refusal(&client_frame(false, opcode::PING, b"", true)), 1002);
    assert_eq!(
        refusal(&client_frame(true, opcode::PING, &[0; 126], true)),
        1002
    );
    assert_eq!(refusal(&client_frame(true, 0x3, b"", true)), 1002);
    let mut reserved = binary(b"x");
    reserved[0] |= 0x40;
    assert_eq!(refusal(&reserved), 1002);
    let mut nested = client_frame(false, opcode::BINARY, b"x", true);
    nested.extend(binary(b"y"));
    assert_eq!(refusal(&nested), 1002);
    assert_eq!(
        refusal(&client_frame(true, opcode::CLOSE, b"\x03", true)),
        1002
    );
    assert_eq!(
        refusal(&client_frame(
            true,
            opcode::CLOSE,
            &1005u16.to_be_bytes(),
            true
        )),
        1002
    );
}

#[test]
fn text_frames_close_with_1003_and_oversize_frames_with_1009_before_their_payload() {
    assert_eq!(
        refusal(&client_frame(true, opcode::TEXT, b"{}", true)),
        1003
    );
    let mut decoder = Decoder::new(100);
    let header_only = &client_frame(true, opcode::BINARY, &[0; 101], true)[..8];
    let error = decoder.decode(header_only, &mut [0; 8]).unwrap_err();
    assert_eq!(error.code, status::TOO_BIG);
    let mut decoder = Decoder::new(100);
    let fits = client_frame(true, opcode::BINARY, &[0; 100], true);
    assert_eq!(decoder.decode(&fits, &mut [0; 128]).unwrap().written, 100);
}

/// Decodes `input` in pieces of `piece` bytes into an output buffer of `out` bytes, to the
/// end or the first refusal.
fn outcome(input: &[u8], piece: usize, out: usize) -> (Vec<u8>, Vec<Event>, Option<Violation>) {
    let mut decoder = Decoder::new(32);
    let (mut data, mut events, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    let mut buf = vec![0u8; out];
    for chunk in input.chunks(piece) {
        pending.extend_from_slice(chunk);
        loop {
            let step = match decoder.decode(&pending, &mut buf) {
                Ok(step) => step,
                Err(violation) => return (data, events, Some(violation)),
            };
            assert!(step.consumed <= pending.len() && step.written <= buf.len());
            pending.drain(..step.consumed);
            data.extend_from_slice(&buf[..step.written]);
            let progressed = step.consumed > 0 || step.event.is_some();
            events.extend(step.event);
            if !progressed {
                break;
            }
        }
    }
    (data, events, None)
}

#[test]
fn arbitrary_input_decodes_the_same_whole_or_in_pieces_and_never_panics() {
    // A small deterministic generator (xorshift), so a failure replays; the same property as
    // the `websocket_frames` fuzz target. Inputs are mostly well-formed masked frames with a
    // byte flipped now and then, so that they get past the first header.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut input = Vec::new();
        for _ in 0..next() % 4 {
            let opcode = [
                opcode::BINARY,
                opcode::CONTINUATION,
                opcode::PING,
                opcode::CLOSE,
            ][(next() % 4) as usize];
            let payload: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
            input.extend(client_frame(next() % 3 != 0, opcode, &payload, true));
        }
        if !input.is_empty() && next() % 2 == 0 {
            let at = (next() as usize) % input.len();
            input[at] ^= 1 << (next() % 8);
        }
        let whole = outcome(&input, input.len().max(1), 1 << 10);
        let piece = (next() % 7) as usize + 1;
        let pieces = outcome(&input, piece, (next() % 5) as usize + 1);
        assert_eq!((&whole.1, &whole.2), (&pieces.1, &pieces.2), "{input:?}");
        match whole.2 {
            None => assert_eq!(whole.0, pieces.0, "{input:?}"),
            Some(_) => assert!(pieces.0.starts_with(&whole.0), "{input:?}"),
        }
    }
}

fn from_origin(origin: Option<&str>, host: &str) -> Request {
    let mut request = upgrade_request();
    request.headers[0].1 = host.into();
    if let Some(origin) = origin {
        request.headers.push(("origin".into(), origin.into()));
    }
    request
}

#[test]
fn pages_of_other_origins_are_refused_unless_allowed() {
    let host = "broker.example:8083";
    let allowed = |origin: Option<&str>, list: &[&str]| {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        is_origin_allowed(&from_origin(origin, host), &list)
    };
    assert!(allowed(None, &[]), "not a browser");
    assert!(
        allowed(Some("http://broker.example:8083"), &[]),
        "its own page"
    );
    assert!(allowed(Some("http://localhost:3000"), &[]), "a local page");
    assert!(allowed(Some("http://127.0.0.1:5173"), &[]));
    assert!(allowed(Some("http://[::1]:8080"), &[]));
    assert!(
        !allowed(Some("https://evil.example"), &[]),
        "a site the user visits"
    );
    assert!(!allowed(Some("null"), &[]), "a file or sandboxed frame");
    assert!(!allowed(Some("http://localhost.evil.example"), &[]));
    assert!(!allowed(Some("http://127.0.0.1.evil.example:80"), &[]));
    assert!(allowed(
        Some("https://app.example"),
        &["https://app.example/"]
    ));
    assert!(!allowed(
        Some("https://app.example.evil"),
        &["https://app.example"]
    ));
    assert!(allowed(Some("https://anything.example"), &["*"]));
    assert_eq!(
        forbidden_origin(&from_origin(Some("https://e.x"), host)).status,
        403
    );
}
