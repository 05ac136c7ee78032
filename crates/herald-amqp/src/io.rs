//! The byte stream under fe2o3.
//!
//! * An idle reaper: reading nothing for `idle` fails the stream.
//! * A tap on the first client bytes: fe2o3 does not expose the peer's SASL
//!   init or Open, and Herald routes by the Open hostname.
//! * A performative padder on the write side: fe2o3 (legally) omits
//!   trailing null fields of performative lists, but the Python SDK's
//!   pure-Python AMQP stack indexes fields positionally (`frame[4]` of Open,
//!   `frame[13]` of Attach, `frame[2]` of Detach, the Transfer payload at
//!   `frame[11]`, ...) and misreads `list0`. Every outgoing performative is
//!   re-encoded at the byte level as a list8/list32 with its full field count
//!   (missing fields as null, which AMQP defines as the default).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use fe2o3_amqp_types::{performatives::Open, sasl::SaslInit};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf},
    sync::mpsc,
    time::{Instant, Sleep},
};
use tokio_util::sync::PollSender;

/// Bytes the tap keeps at most (SASL frames and the Open are small).
const CAPTURE_MAX: usize = 16 * 1024;

/// Shared capture buffer; `None` once capture has stopped.
pub(crate) type Capture = Arc<Mutex<Option<Vec<u8>>>>;

/// Chunks queued for the writer task (each at most a few frames).
const WRITE_QUEUE: usize = 32;

/// The writer task coalesces queued chunks up to this many bytes per write.
const COALESCE_MAX: usize = 256 * 1024;

/// Wraps the transport (see the module docs). Writes are handed to a
/// writer task that coalesces frames into few syscalls: fe2o3 flushes after
/// every frame, which otherwise costs one `send` per event.
pub(crate) struct Tapped<S> {
    reader: ReadHalf<S>,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    capture: Capture,
    /// Outgoing bytes not yet forming a complete frame.
    pending: BytesMut,
    /// Padded bytes for the next chunk.
    out: BytesMut,
    writer: PollSender<Bytes>,
}

impl<S> std::fmt::Debug for Tapped<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tapped")
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Tapped<S> {
    pub(crate) fn new(inner: S, idle: Duration) -> (Self, Capture) {
        let capture: Capture = Arc::new(Mutex::new(Some(Vec::with_capacity(1024))));
        let (reader, writer) = tokio::io::split(inner);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_behind(writer, rx));
        (
            Self {
                reader,
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
                capture: capture.clone(),
                pending: BytesMut::new(),
                out: BytesMut::new(),
                writer: PollSender::new(tx),
            },
            capture,
        )
    }
}

async fn write_behind<W: AsyncWrite>(mut w: WriteHalf<W>, mut rx: mpsc::Receiver<Bytes>) {
    let mut buf = BytesMut::new();
    while let Some(first) = rx.recv().await {
        let mut chunk = first;
        if let Ok(next) = rx.try_recv() {
            buf.extend_from_slice(&chunk);
            buf.extend_from_slice(&next);
            while buf.len() < COALESCE_MAX {
                match rx.try_recv() {
                    Ok(more) => buf.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            chunk = buf.split().freeze();
        }
        if w.write_all(&chunk).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

impl<S: AsyncRead> AsyncRead for Tapped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.reader).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    let idle = this.idle;
                    this.deadline.as_mut().reset(Instant::now() + idle);
                    if let Ok(mut guard) = this.capture.lock()
                        && let Some(v) = guard.as_mut()
                    {
                        let room = CAPTURE_MAX.saturating_sub(v.len());
                        v.extend_from_slice(&got[..got.len().min(room)]);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection writer stopped")
}

impl<S> AsyncWrite for Tapped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.writer.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Err(closed())),
            Poll::Pending => return Poll::Pending,
        }
        this.pending.extend_from_slice(buf);
        pad_frames(&mut this.pending, &mut this.out);
        if this.out.is_empty() {
            this.writer.abort_send();
        } else if this.writer.send_item(this.out.split().freeze()).is_err() {
            return Poll::Ready(Err(closed()));
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Write-behind: queued chunks reach the socket in order; a failed
        // socket shows up as an error on the next write.
        if self.writer.is_closed() {
            Poll::Ready(Err(closed()))
        } else {
            Poll::Ready(Ok(()))
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer.close();
        Poll::Ready(Ok(()))
    }
}

/// Full field count of each performative (AMQP 1.0 part 2.7, 5.3).
fn full_field_count(frame_type: u8, code: u8) -> Option<u32> {
    Some(match (frame_type, code) {
        (0, 0x10) => 10, // open
        (0, 0x11) => 8,  // begin
        (0, 0x12) => 14, // attach
        (0, 0x13) => 11, // flow
        (0, 0x14) => 11, // transfer
        (0, 0x15) => 6,  // disposition
        (0, 0x16) => 3,  // detach
        (0, 0x17) => 1,  // end
        (0, 0x18) => 1,  // close
        (1, 0x40) => 1,  // sasl-mechanisms
        (1, 0x42) => 1,  // sasl-challenge
        (1, 0x44) => 2,  // sasl-outcome
        _ => return None,
    })
}

/// Move every complete frame (or protocol header) from `pending` to `out`,
/// padding performative lists to their full field count.
pub(crate) fn pad_frames(pending: &mut BytesMut, out: &mut BytesMut) {
    loop {
        if pending.len() >= 4 && &pending[..4] == b"AMQP" {
            if pending.len() < 8 {
                return;
            }
            out.extend_from_slice(&pending.split_to(8));
            continue;
        }
        if pending.len() < 8 {
            return;
        }
        let size = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if size < 8 {
            // Not a frame we understand: pass everything through untouched.
            out.extend_from_slice(&pending.split());
            return;
        }
        if pending.len() < size {
            return;
        }
        let frame = pending.split_to(size);
        pad_one(&frame, out);
    }
}

fn pad_one(frame: &[u8], out: &mut BytesMut) {
    let doff = frame[4] as usize * 4;
    let ftype = frame[5];
    if doff < 8 || doff > frame.len() {
        out.extend_from_slice(frame);
        return;
    }
    let body = &frame[doff..];
    if body.len() < 4 || body[0] != 0x00 || body[1] != 0x53 {
        out.extend_from_slice(frame);
        return;
    }
    let Some(full) = full_field_count(ftype, body[2]) else {
        out.extend_from_slice(frame);
        return;
    };
    let parsed = match body[3] {
        0x45 => Some((0u32, 4usize, 4usize)),
        0xc0 if body.len() >= 6 => {
            let size = body[4] as usize;
            (size >= 1 && 5 + size <= body.len()).then(|| (body[5] as u32, 6, 5 + size))
        }
        0xd0 if body.len() >= 12 => {
            let size = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
            let count = u32::from_be_bytes([body[8], body[9], body[10], body[11]]);
            (size >= 4 && 8 + size <= body.len()).then_some((count, 12, 8 + size))
        }
        _ => None,
    };
    let Some((count, items_start, items_end)) = parsed else {
        out.extend_from_slice(frame);
        return;
    };
    if count >= full {
        out.extend_from_slice(frame);
        return;
    }
    let items = &body[items_start..items_end];
    let rest = &body[items_end..];
    let missing = (full - count) as usize;
    let items_len = items.len() + missing;
    let list_len = if items_len < 255 {
        3 + items_len
    } else {
        9 + items_len
    };
    let new_size = doff + 3 + list_len + rest.len();
    out.reserve(new_size);
    out.put_u32(new_size as u32);
    out.extend_from_slice(&frame[4..doff]);
    out.extend_from_slice(&body[..3]);
    if items_len < 255 {
        out.put_u8(0xc0);
        out.put_u8((items_len + 1) as u8);
        out.put_u8(full as u8);
    } else {
        out.put_u8(0xd0);
        out.put_u32((items_len + 4) as u32);
        out.put_u32(full);
    }
    out.extend_from_slice(items);
    out.put_bytes(0x40, missing);
    out.extend_from_slice(rest);
}

/// What the client said before the connection was open.
#[derive(Debug, Default)]
pub(crate) struct Preamble {
    pub(crate) sasl_init: Option<SaslInit>,
    pub(crate) open: Option<Open>,
}

/// Parse the captured client bytes: protocol headers, SASL frames, Open.
pub(crate) fn parse_preamble(buf: &[u8]) -> Preamble {
    let mut out = Preamble::default();
    let mut pos = 0;
    while pos + 8 <= buf.len() {
        if &buf[pos..pos + 4] == b"AMQP" {
            pos += 8;
            continue;
        }
        let size =
            u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        let doff = buf[pos + 4] as usize * 4;
        let ftype = buf[pos + 5];
        if size < 8 || doff < 8 || doff > size || pos + size > buf.len() {
            break;
        }
        let body = &buf[pos + doff..pos + size];
        pos += size;
        if body.is_empty() {
            continue; // heartbeat
        }
        match ftype {
            1 => {
                if out.sasl_init.is_none() {
                    out.sasl_init = serde_amqp::from_slice::<SaslInit>(body).ok();
                }
            }
            0 => {
                out.open = serde_amqp::from_slice::<Open>(body).ok();
                break;
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_detach_and_end() {
        // detach(handle=0, closed=true): list8 of 2 fields
        let body = [0x00, 0x53, 0x16, 0xc0, 0x03, 0x02, 0x43, 0x41];
        let mut frame = vec![0, 0, 0, (8 + body.len()) as u8, 2, 0, 0, 1];
        frame.extend_from_slice(&body);
        // end with list0
        let end = [0x00, 0x53, 0x17, 0x45];
        let mut frame2 = vec![0, 0, 0, (8 + end.len()) as u8, 2, 0, 0, 1];
        frame2.extend_from_slice(&end);
        let mut pending = BytesMut::from(&b"AMQP\x00\x01\x00\x00"[..]);
        pending.extend_from_slice(&frame);
        pending.extend_from_slice(&frame2[..5]);
        let mut out = BytesMut::new();
        pad_frames(&mut pending, &mut out);
        assert_eq!(&out[..8], b"AMQP\x00\x01\x00\x00");
        assert_eq!(
            &out[8..],
            &[
                0, 0, 0, 17, 2, 0, 0, 1, 0x00, 0x53, 0x16, 0xc0, 0x04, 0x03, 0x43, 0x41, 0x40
            ][..]
        );
        pending.extend_from_slice(&frame2[5..]);
        out.clear();
        pad_frames(&mut pending, &mut out);
        assert_eq!(
            &out[..],
            &[
                0, 0, 0, 15, 2, 0, 0, 1, 0x00, 0x53, 0x17, 0xc0, 0x02, 0x01, 0x40
            ][..]
        );
        assert!(pending.is_empty());
    }

    #[test]
    fn keeps_transfer_payload() {
        // transfer(handle=0, delivery-id=0) + payload "xy"
        let body = [0x00, 0x53, 0x14, 0xc0, 0x03, 0x02, 0x43, 0x43, b'x', b'y'];
        let mut frame = vec![0, 0, 0, (8 + body.len()) as u8, 2, 0, 0, 0];
        frame.extend_from_slice(&body);
        let mut pending = BytesMut::from(&frame[..]);
        let mut out = BytesMut::new();
        pad_frames(&mut pending, &mut out);
        assert_eq!(out.len(), frame.len() + 9);
        assert_eq!(&out[out.len() - 2..], b"xy");
        assert_eq!(out[13], 11);
    }
}
