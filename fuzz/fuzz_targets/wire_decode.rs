//! The wire decoder against arbitrary bytes, as a worker reads them from a connection it does not
//! trust: split the buffer into frames, decode each as a request and as a response. It must never
//! panic, never allocate what the header claims before the bytes are there, and whatever decodes
//! must encode back to a frame that decodes to the same value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rcache_transport::protocol::{Request, Response, split_frame};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // A bounded number of frames per input: every frame consumes at least the header.
    while let Ok(Some((h, meta, payload))) = split_frame(&mut buf) {
        if let Ok(req) = Request::decode(h.op, &meta, payload.clone()) {
            let mut out = BytesMut::new();
            req.encode_frame(h.id, &mut out);
            let (h2, m2, d2) = split_frame(&mut out)
                .expect("an encoded request splits")
                .expect("an encoded request is complete");
            assert_eq!(h2.id, h.id);
            assert_eq!(Request::decode(h2.op, &m2, d2).expect("re-decodes"), req);
        }
        if let Ok(resp) = Response::decode(h.op, &meta, payload) {
            let mut out = BytesMut::new();
            resp.encode_frame(h.id, &mut out);
            let (h2, m2, d2) = split_frame(&mut out)
                .expect("an encoded response splits")
                .expect("an encoded response is complete");
            assert_eq!(Response::decode(h2.op, &m2, d2).expect("re-decodes"), resp);
        }
    }
});
