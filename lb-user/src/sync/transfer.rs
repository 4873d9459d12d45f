//! Full connection tables between directors, over TCP on the sync address: a director that
//! catches up asks a peer, which answers with every live entry of its table. The server first
//! sends a random challenge; the request must carry it, and so does every frame of the answer
//! (each one a sync message with its own HMAC, prefixed with its length), so a recorded transfer
//! cannot be replayed into another one.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::{info, warn};

use super::{
    canonical, random_u64, record_of,
    wire::{self, Body, Key, Message, Op, Record},
    Shared,
};

/// A transfer must connect within this, and each frame arrive within [`IO_TIMEOUT`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Records per frame: many per HMAC, each frame well under [`wire::MAX_FRAME`].
const TABLE_FRAME_RECORDS: usize = 1000;

async fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> Result<()> {
    stream
        .write_all(&(frame.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(frame).await?;
    Ok(())
}

async fn read_frame(stream: &mut TcpStream, key: &Key) -> Result<Message> {
    let read = async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > wire::MAX_FRAME + wire::HEADER_LEN + wire::TAG_LEN {
            bail!("a frame of {len} bytes is too large");
        }
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        wire::decode(key, &buf).map_err(|r| anyhow!("frame refused: {}", r.name()))
    };
    tokio::time::timeout(IO_TIMEOUT, read)
        .await
        .map_err(|_| anyhow!("no frame within {IO_TIMEOUT:?}"))?
}

/// Serves full tables to peers that ask (TCP on the sync address).
pub(super) async fn serve_tables(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!("connection sync: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !shared.is_peer_ip(from.ip()) {
            shared.reject("unknown_peer");
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            match serve_table(&shared, stream).await {
                Ok(n) => info!(peer = %from.ip(), flows = n, "connection sync: sent our table"),
                Err(e) => warn!(peer = %from.ip(), "connection sync: table transfer: {e:#}"),
            }
        });
    }
}

async fn serve_table(shared: &Shared, mut stream: TcpStream) -> Result<u64> {
    let from = canonical(stream.peer_addr()?).ip();
    let nonce = random_u64();
    write_frame(&mut stream, &shared.encode(Body::Challenge, nonce)).await?;
    let request = read_frame(&mut stream, &shared.key)
        .await
        .inspect_err(|_| {
            shared.reject("auth");
        })?;
    if request.body != Body::Request || request.header.nonce != nonce {
        shared.reject("replay");
        bail!("the request does not answer our challenge");
    }
    let directory = shared.directory.read().unwrap().clone();
    let table = shared.tables.open()?;
    let now = (shared.ticks)();
    let entries = tokio::task::block_in_place(|| table.entries())?;
    let records: Vec<Record> = entries
        .iter()
        .filter(|(flow, conn)| directory.alive(flow, conn, now))
        .filter_map(|(flow, conn)| {
            record_of(
                &directory,
                flow,
                conn.service,
                conn.real,
                Op::Bind,
                conn.flags,
                0,
            )
        })
        .collect();
    for chunk in records.chunks(TABLE_FRAME_RECORDS) {
        let frame = shared.encode(Body::Table(chunk.to_vec()), nonce);
        write_frame(&mut stream, &frame).await?;
    }
    let total = records.len() as u64;
    write_frame(&mut stream, &shared.encode(Body::TableEnd { total }, nonce)).await?;
    stream.shutdown().await?;
    let mut inner = shared.inner.lock().unwrap();
    if let Some(p) = inner.peers.iter_mut().find(|p| p.addr.ip() == from) {
        p.tables_sent += 1;
    }
    Ok(total)
}

/// Asks `peer` for its whole table and writes it into ours; returns the number of flows.
pub(super) async fn fetch_table(shared: &Shared, peer: SocketAddr) -> Result<u64> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer))
        .await
        .map_err(|_| anyhow!("no answer within {CONNECT_TIMEOUT:?}"))??;
    let challenge = read_frame(&mut stream, &shared.key).await?;
    if challenge.body != Body::Challenge {
        bail!("expected a challenge");
    }
    let nonce = challenge.header.nonce;
    write_frame(&mut stream, &shared.encode(Body::Request, nonce)).await?;
    let (mut received, mut unknown) = (0u64, 0u64);
    loop {
        let frame = read_frame(&mut stream, &shared.key).await?;
        if frame.header.nonce != nonce {
            bail!("a frame of another transfer");
        }
        match frame.body {
            Body::Table(records) => {
                let (w, u) = tokio::task::block_in_place(|| shared.apply(&records));
                received += w;
                unknown += u;
            }
            Body::TableEnd { total } => {
                if total != received + unknown {
                    bail!(
                        "the transfer ended after {} of {total} flows",
                        received + unknown
                    );
                }
                let mut inner = shared.inner.lock().unwrap();
                if let Some(p) = inner.peers.iter_mut().find(|p| p.addr == peer) {
                    p.tables_received += 1;
                    p.flows_unknown += unknown;
                }
                return Ok(received);
            }
            _ => bail!("unexpected message in a table transfer"),
        }
    }
}
