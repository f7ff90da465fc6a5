//! One syscall per write, two ways: `sendmsg` with the slices as they are queued (a small
//! response's 142-byte head and 100-byte body) against `upkeep_runtime::io::send` (the slices
//! gathered into one buffer, then `send`), over a loopback TCP connection whose other end a
//! thread drains. Wall time per call: the sender's syscall, loopback delivery included.
//!
//! `cargo bench -p upkeep-benches --bench send` (about 30 s).

use std::hint::black_box;
use std::io::{IoSlice, Read};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use socket2::SockRef;

fn send(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    sender.set_nodelay(true).unwrap();
    let (mut receiver, _) = listener.accept().unwrap();
    let drain = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(receiver.read(&mut buf), Ok(n) if n > 0) {}
    });
    let head = [b'h'; 142];
    let body = [b'x'; 100];
    let iov = [IoSlice::new(&head), IoSlice::new(&body)];
    let sock = SockRef::from(&sender);
    let mut g = c.benchmark_group("send");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("sendmsg 142+100", |b| {
        b.iter(|| {
            black_box(
                sock.send_vectored_with_flags(&iov, libc::MSG_NOSIGNAL)
                    .unwrap(),
            )
        })
    });
    g.bench_function("gathered send 142+100", |b| {
        b.iter(|| black_box(upkeep_runtime::io::send(&sock, &iov).unwrap()))
    });
    g.finish();
    drop(sender);
    drain.join().unwrap();
}

criterion_group!(benches, send);
criterion_main!(benches);
