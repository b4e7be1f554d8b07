//! The retry contract for bodies: a body cut short or not well-formed is fetched again, a
//! bounded number of times (`body_attempts`), wherever it was cut and however it broke, and the
//! window ends equal; what the transport knows to be cut is reported as truncated. Against a
//! raw loopback HTTP/1.1 server, so the framing (a short `Content-Length`, one not reached, a
//! chunked stream cut) is the test's to choose, byte for byte.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nprov_sync::store::RunKind;
use nprov_sync::sync::sync_window;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// How an answer is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// `Content-Length` of exactly the bytes sent: the transport sees a complete body.
    Honest,
    /// `Content-Length` of the whole document, then only the bytes given and a closed
    /// connection: the transport knows the body ended early.
    Declared(usize),
    /// Chunked, the bytes given as one chunk, then a closed connection without the last chunk.
    ChunkedCut,
}

/// What the server sends for one request.
#[derive(Clone)]
struct Reply {
    body: Vec<u8>,
    frame: Frame,
}

/// A loopback HTTP/1.1 server answering each request with what `script` says for its number
/// (0, 1, …), one connection per request.
struct RawServer {
    url: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_server(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> RawServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let script = Arc::new(script);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            // Without it, each small response waits for a delayed ACK.
            socket.set_nodelay(true).expect("nodelay");
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let reply = script(n);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let mut out = Vec::new();
                match reply.frame {
                    Frame::Honest => {
                        out.extend_from_slice(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                reply.body.len()
                            )
                            .as_bytes(),
                        );
                        out.extend_from_slice(&reply.body);
                    }
                    Frame::Declared(full) => {
                        out.extend_from_slice(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {full}\r\nConnection: close\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                        out.extend_from_slice(&reply.body);
                    }
                    Frame::ChunkedCut => {
                        out.extend_from_slice(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                        );
                        if !reply.body.is_empty() {
                            out.extend_from_slice(format!("{:x}\r\n", reply.body.len()).as_bytes());
                            out.extend_from_slice(&reply.body);
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                }
                let _ = socket.write_all(&out).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    RawServer {
        url,
        requests,
        task,
    }
}

/// The window every test here reads.
fn the_window() -> nprov_sync::window::Window {
    window("2026-01-10T00:00:00Z", "2026-01-10T06:00:00Z")
}

/// Syncs [`the_window`] from `server` into a fresh database (as a backfill: no watermark
/// bookkeeping to set up): the database and what the engine returned.
async fn sync_from(
    backend: Backend,
    server: &RawServer,
) -> (
    Db,
    Result<Vec<nprov_sync::sync::WindowReport>, nprov_sync::sync::SyncError>,
) {
    let db = backend.fresh().await;
    let source = crate::sync::source(&server.url, 6);
    let result = sync_window(
        db.store.as_ref(),
        &source,
        the_window(),
        RunKind::Backfill,
        None,
    )
    .await;
    (db, result)
}

/// The document of step `k`: one pupil whose id, school form and results hold multi-byte
/// characters and entity references (`&amp;`, `&lt;`), so that cuts fall inside both.
fn document(k: usize) -> String {
    doc(&[kurs(
        &format!("elev-å&<{k}"),
        "SVESVE01",
        "GY",
        vec![pt("2026-01-10", "A", &[("Muntlig & skriftlig", "B")])],
    )])
}

/// What the mirror should hold after steps `0..n`: every step's document imported whole.
async fn reference(backend: Backend, n: usize) -> Vec<String> {
    let db = backend.fresh().await;
    for k in 0..n {
        import_at(db.store.as_ref(), "default", &document(k), at(1))
            .await
            .expect("reference import");
    }
    db.dump().await
}

/// Every cut of `frame` kind, at every byte offset of a document: step `k` answers its first
/// request with the document cut at byte `k`, and the next with the whole document. Each step
/// commits its document (a cut body is never applied, nor does it fail the window), in at most
/// two requests.
async fn every_cut_is_retried(backend: Backend, frame: fn(usize) -> Frame) {
    let len = document(0).len();
    let step = Arc::new(Mutex::new((0usize, 0usize))); // (k, requests of step k)
    let s = step.clone();
    let server = raw_server(move |_| {
        let mut st = s.lock().expect("lock");
        let (k, n) = *st;
        st.1 += 1;
        let whole = document(k).into_bytes();
        if n == 0 {
            let cut = k.min(whole.len());
            Reply {
                body: whole[..cut].to_vec(),
                frame: match frame(whole.len()) {
                    Frame::Declared(_) => Frame::Declared(whole.len()),
                    other => other,
                },
            }
        } else {
            Reply {
                body: whole,
                frame: Frame::Honest,
            }
        }
    })
    .await;
    let db = backend.fresh().await;
    let source = crate::sync::source(&server.url, 6);
    let w = the_window();
    // Offsets past a digit boundary of k shift by a byte; every step stays within its own
    // document, which is at least `len` bytes long.
    for k in 0..len {
        *step.lock().expect("lock") = (k, 0);
        let reports = sync_window(db.store.as_ref(), &source, w, RunKind::Backfill, None)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{frame:?} cut at byte {k} of {len}: {e}",
                    frame = frame(len)
                )
            });
        assert_eq!(reports.len(), 1, "cut at {k}");
        let requests = step.lock().expect("lock").1;
        assert!(requests <= 2, "cut at {k}: {requests} requests");
    }
    assert_eq!(db.dump().await, reference(backend, len).await);
    // Every cut body was recorded nowhere: only the committed windows are in sync_run.
    let failed = db
        .texts("SELECT CAST(COUNT(*) AS TEXT) FROM sync_run WHERE outcome <> 'ok'")
        .await;
    assert_eq!(failed, vec![vec!["0".to_string()]]);
    assert!(server.requests.load(Ordering::SeqCst) <= 2 * len);
}

async fn a_body_cut_at_any_byte_with_an_honest_length_is_fetched_again(backend: Backend) {
    every_cut_is_retried(backend, |_| Frame::Honest).await
}

async fn a_body_cut_at_any_byte_before_its_declared_length_is_fetched_again(backend: Backend) {
    every_cut_is_retried(backend, Frame::Declared).await
}

async fn a_chunked_body_cut_at_any_byte_is_fetched_again(backend: Backend) {
    every_cut_is_retried(backend, |_| Frame::ChunkedCut).await
}

/// Each way a body can be not well-formed, once, then the good document: the window commits
/// after one retry, equal to the document.
async fn every_kind_of_malformed_body_is_fetched_again(backend: Backend) {
    let good = document(0);
    let root_end = good.rfind("</").expect("root end tag");
    let first_close = good.find("</kursresultat>").expect("kursresultat");
    // Latin-1 bytes where UTF-8 belongs: the "å" of the id as its Latin-1 byte.
    let mut latin1 = good.clone().into_bytes();
    let a = good.find('å').expect("å");
    latin1.splice(a..a + 2, [0xE5u8]);
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        (
            "undeclared entity",
            good.replacen("Muntlig &amp;", "Muntlig&nbsp;&amp;", 1)
                .into_bytes(),
        ),
        (
            "mismatched end tag",
            format!(
                "{}</kurs>{}",
                &good[..first_close],
                &good[first_close + 15..]
            )
            .into_bytes(),
        ),
        (
            "root end tag without >",
            format!("{}</provresultat\n", &good[..root_end]).into_bytes(),
        ),
        ("not UTF-8", latin1),
        (
            "a NUL byte",
            good.replacen("SVESVE01", "SVE\0SVE01", 1).into_bytes(),
        ),
        ("trailing content", format!("{good}<extra/>").into_bytes()),
        (
            "an intermediary's HTML page",
            b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>".to_vec(),
        ),
        (
            "another root",
            b"<html><body>Service temporarily unavailable</body></html>".to_vec(),
        ),
    ];
    for (name, broken) in kinds {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let good_bytes = good.clone().into_bytes();
        let server = raw_server(move |n| {
            c.fetch_add(1, Ordering::SeqCst);
            Reply {
                body: if n == 0 {
                    broken.clone()
                } else {
                    good_bytes.clone()
                },
                frame: Frame::Honest,
            }
        })
        .await;
        let (db, result) = sync_from(backend, &server).await;
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}");
        assert_eq!(db.dump().await, reference(backend, 1).await, "{name}");
    }
}

/// A body the transport always cuts inside a multi-byte character, before its declared length:
/// after `body_attempts` the window fails saying the body was truncated (with the bytes that
/// came and what the parser saw at the cut), not that the bytes are not UTF-8.
async fn a_body_always_cut_fails_saying_it_was_truncated(backend: Backend) {
    let whole = document(0).into_bytes();
    let cut = document(0).find('å').expect("å") + 1;
    let full = whole.len();
    let server = raw_server(move |_| Reply {
        body: whole[..cut].to_vec(),
        frame: Frame::Declared(full),
    })
    .await;
    let (db, result) = sync_from(backend, &server).await;
    let e = result.expect_err("always cut");
    let text = e.to_string();
    assert!(text.contains("body truncated"), "{text}");
    assert!(
        text.contains(&format!("ended after {cut} bytes of the {full} declared")),
        "{text}"
    );
    assert_eq!(
        nprov_sync::sync::next_step(&e),
        nprov_sync::sync::Next::RetryBody
    );
    // Three whole attempts (the source's body_attempts), then one failed run recorded.
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    assert_eq!(db.runs().await.len(), 1);
    assert_eq!(db.store.table_counts().await.expect("counts").provomrade, 0);
}

/// What is wrong by the content itself (a declared encoding other than UTF-8) is not fetched
/// again: the same bytes would come back.
async fn a_body_wrong_by_its_content_is_not_fetched_again(backend: Backend) {
    let body = document(0).replacen(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>",
        1,
    );
    assert!(
        body.contains("ISO-8859-1"),
        "the document starts with a declaration"
    );
    let server = raw_server(move |_| Reply {
        body: body.clone().into_bytes(),
        frame: Frame::Honest,
    })
    .await;
    let (_db, result) = sync_from(backend, &server).await;
    let e = result.expect_err("refused");
    assert!(e.to_string().contains("unsupported encoding"), "{e}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

for_each_backend!(
    a_body_cut_at_any_byte_with_an_honest_length_is_fetched_again,
    a_body_cut_at_any_byte_before_its_declared_length_is_fetched_again,
    a_chunked_body_cut_at_any_byte_is_fetched_again,
    every_kind_of_malformed_body_is_fetched_again,
    a_body_always_cut_fails_saying_it_was_truncated,
    a_body_wrong_by_its_content_is_not_fetched_again,
);
