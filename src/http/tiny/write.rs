//! Writing answers: whole, in one write, and never on a connection already told to close.

use std::io::Write;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::connections::Connections;
use crate::http::reply::{ApiError, Reply};

/// What a request gets on a connection the service has told to close.
pub const CLOSED_CONNECTION: &str =
    "This connection was closed by the server; send the request on a new one.";

/// How an answer ends its connection.
pub(super) enum Ending {
    KeepAlive,
    /// The client asked to close; tiny_http closes.
    ClientCloses,
    /// The service closes: tiny_http 0.12 cannot, and reads on, so the peer is remembered
    /// and nothing more is answered on this connection but [`CLOSED_CONNECTION`].
    ServerCloses,
}

/// Writes a response through tiny_http; a panic while tiny_http drains what is left of the
/// request (it panics on a length it cannot even allocate) is contained.
pub(super) fn respond(
    request: tiny_http::Request,
    response: tiny_http::Response<std::io::Cursor<Vec<u8>>>,
) {
    match catch_unwind(AssertUnwindSafe(|| request.respond(response))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("writing a response: {e}"),
        Err(_) => log::error!("writing a response: tiny_http panicked while draining a body"),
    }
}

/// A header value tiny_http and clients accept: visible ASCII, spaces and tabs.
fn writable(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Writes a whole response in one write, by hand on the request's raw writer, with the
/// headers tiny_http would add (`Date`, `Content-Length`) and `Connection`. tiny_http writes
/// the head and a body of more than about a kilobyte in two writes; with Nagle's algorithm
/// on its sockets (it never sets `TCP_NODELAY`), the second waits for the client's delayed
/// ACK of the first: 40 ms added to every such answer on a keep-alive connection. It also
/// drops a `Connection` header from a `Response`, so a closing answer cannot go through it.
///
/// Answers on one connection go out in order: the writer waits for its turn. At its turn,
/// an answer on a connection an earlier answer closed is replaced by the 400 of
/// [`CLOSED_CONNECTION`]: tiny_http may have handed out a request pipelined behind a
/// refused one before the refusal was decided.
pub(super) fn write_whole(
    request: tiny_http::Request,
    reply: &Reply,
    head_only: bool,
    ending: Ending,
    (connections, peer): (&Connections, Option<SocketAddr>),
) {
    let connection = match ending {
        Ending::KeepAlive => "keep-alive",
        Ending::ClientCloses | Ending::ServerCloses => "close",
    };
    // As in respond: a panic while tiny_http drains the rest of the request is contained.
    let written = catch_unwind(AssertUnwindSafe(move || {
        let mut writer = request.into_writer();
        // An empty flush waits for this answer's turn on the connection.
        writer.flush()?;
        let closed = peer.filter(|p| connections.was_told_to_close(p));
        let out = match (&ending, closed) {
            (Ending::ServerCloses, _) | (_, None) => render(reply, head_only, connection),
            (_, Some(peer)) => {
                log::warn!(
                    "{peer}: a {} answer replaced: the connection was closed by an earlier one",
                    reply.status
                );
                let mut refused = ApiError::BadRequest(CLOSED_CONNECTION.into()).reply();
                // Every answer says its request's id, this one too (SPEC §1).
                if let Some(id) = reply.header("X-Request-Id") {
                    refused = refused.with_header("X-Request-Id", id);
                }
                render(&refused, head_only, "close")
            }
        };
        if let (Ending::ServerCloses, Some(peer)) = (ending, peer) {
            // Before this answer's turn ends: the next answer's check sees it.
            connections.told_to_close(peer);
        }
        writer.write_all(&out).and_then(|()| writer.flush())
    }));
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("writing a response: {e}"),
        Err(_) => log::error!("writing a response: tiny_http panicked while draining a body"),
    }
}

/// The bytes of a response.
fn render(reply: &Reply, head_only: bool, connection: &str) -> Vec<u8> {
    let reason = tiny_http::StatusCode(reply.status).default_reason_phrase();
    let mut out = Vec::with_capacity(256 + reply.body.len());
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", reply.status);
    for (name, value) in reply.headers.iter().filter(|(_, v)| writable(v)) {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(
        out,
        "Date: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        reply.body.len()
    );
    if !head_only {
        out.extend_from_slice(&reply.body);
    }
    out
}

pub(super) fn into_response(reply: Reply) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    for (name, value) in reply.headers.iter().filter(|(_, v)| writable(v)) {
        // Every name is a constant and every value is checked above; one that still cannot
        // be a header is left out rather than failing the whole reply.
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    response
}
