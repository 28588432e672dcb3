"""A TCP relay on loopback that counts the bytes it carries and can limit
the rate from the server to the client: a slow link without `tc` (no netem
on these machines). Used by the SSH compression test and bench/link.py.

    r = Relay(target_port, rate_bps=20e6)   # 20 Mbit/s towards the client
    ... connect to 127.0.0.1:r.port ...
    r.down_bytes, r.up_bytes; r.stop()
"""
import selectors
import socket
import threading
import time


class Relay(threading.Thread):
    """Accepts on 127.0.0.1:<port> (0: a free one) and relays each
    connection to 127.0.0.1:<target>. `rate_bps` (bits/s, None: no limit)
    bounds server-to-client bytes of all connections together with a token
    bucket of 1/20 s: what a link of that speed lets through."""

    def __init__(self, target, rate_bps=None, port=0):
        super().__init__(daemon=True)
        self.target = target
        self.rate = rate_bps / 8.0 if rate_bps else None
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(('127.0.0.1', port))
        self.lsock.listen(256)
        self.port = self.lsock.getsockname()[1]
        self.down_bytes = 0  # server -> client
        self.up_bytes = 0
        self.connections = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = time.monotonic()
        self.start()

    def _take(self, want):
        """Bytes that may go now (0..want), by the token bucket."""
        if self.rate is None:
            return want
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.rate / 20, self._tokens + (now - self._last) * self.rate)
            self._last = now
            n = int(min(want, self._tokens))
            self._tokens -= n
            return n

    def run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.lsock, selectors.EVENT_READ, None)
        pending = {}  # client socket -> bytes from the server not yet sent
        peer = {}
        paused = set()  # server sockets not read while their link is full
        while not self._halt.is_set():
            wait = 0.005 if any(pending.values()) else 0.2
            for key, _ in sel.select(wait):
                s = key.fileobj
                if s is self.lsock:
                    c, _ = self.lsock.accept()
                    u = socket.create_connection(('127.0.0.1', self.target))
                    for x in (c, u):
                        x.setblocking(False)
                        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    peer[c], peer[u] = u, c
                    pending[c] = b''
                    sel.register(c, selectors.EVENT_READ, 'client')
                    sel.register(u, selectors.EVENT_READ, 'server')
                    self.connections += 1
                    continue
                if s not in peer:
                    continue  # closed by an earlier event of this round
                side = key.data
                if side == 'server' and len(pending.get(peer[s], b'')) > (1 << 20):
                    # Back-pressure: the slow link is full. Not read (nor
                    # selected, which would spin) until it drains.
                    sel.unregister(s)
                    paused.add(s)
                    continue
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b''
                if not data:
                    if side == 'server' and pending.get(peer[s]):
                        # The client gets what is still on the link first.
                        c = peer[s]
                        sel.unregister(s)
                        s.close()
                        peer.pop(s, None)
                        peer[c] = None
                        continue
                    self._close(sel, s, peer, pending)
                    continue
                if side == 'client':
                    self.up_bytes += len(data)
                    try:
                        if peer[s] is not None:
                            peer[s].sendall(data)
                    except OSError:
                        self._close(sel, s, peer, pending)
                else:
                    pending[peer[s]] += data
            for c in list(pending):
                buf = pending[c]
                if not buf:
                    continue
                n = self._take(len(buf))
                if n <= 0:
                    continue
                try:
                    sent = c.send(buf[:n])
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._close(sel, c, peer, pending)
                    continue
                if self.rate is not None and sent < n:
                    with self._lock:
                        self._tokens += n - sent
                self.down_bytes += sent
                pending[c] = buf[sent:]
                u = peer.get(c)
                if u in paused and len(pending[c]) < (1 << 19):
                    paused.discard(u)
                    sel.register(u, selectors.EVENT_READ, 'server')
                if not pending[c] and peer.get(c, 0) is None:
                    self._close(sel, c, peer, pending)  # the server had ended
        for s in list(peer):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass
        self.lsock.close()

    @staticmethod
    def _close(sel, s, peer, pending):
        other = peer.pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            try:
                sel.unregister(x)
            except (KeyError, ValueError):
                pass
            peer.pop(x, None)
            pending.pop(x, None)
            try:
                x.close()
            except OSError:
                pass

    def stop(self):
        self._halt.set()
        self.join(5)
