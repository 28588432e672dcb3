"""The web endpoint: TLS and basic auth from --web.config.file (exporter-
toolkit format), checked with real curl/openssl clients; bad web configs;
/-/ready and /-/reload."""
import os
import shutil
import socket
import ssl
import struct
import subprocess
import warnings

import harness
import promtext

PASSWORD = 'correct horse'
USERS = ('alice', 'bob')  # alice gets a $2b$ hash, bob a $2y$ one (htpasswd's prefix)


# ----------------------------------------------------------------- helpers

def make_cert(d):
    """A self-signed P-256 certificate for IP 127.0.0.1; returns (cert, key)."""
    cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
                    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
                    '-keyout', key, '-out', cert], check=True, capture_output=True)
    return cert, key


def bcrypt(password, prefix='$2b$'):
    """A bcrypt hash (cost 10) of password: Python's crypt module (3.11 has
    it, deprecated), else htpasswd from apache2-utils."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            import crypt
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 10))
        assert h and h.startswith('$2b$10$') and len(h) == 60, h
        h = prefix + h[4:]  # $2b$ and $2y$ are the same algorithm (libxcrypt)
        assert crypt.crypt(password, h) == h
        return h
    except ImportError:
        htpasswd = shutil.which('htpasswd')
        assert htpasswd, 'need python crypt or htpasswd (apache2-utils) for bcrypt'
        out = subprocess.run([htpasswd, '-nbBC', '10', 'u', password], check=True,
                             capture_output=True, text=True).stdout.strip()
        return prefix + out.split(':', 1)[1][4:]


def yaml_str(s):
    return "'%s'" % s.replace("'", "''")


def write_web_config(path, cert=None, key=None, users=None):
    lines = []
    if cert:
        lines += ['tls_server_config:', '  cert_file: ' + yaml_str(cert),
                  '  key_file: ' + yaml_str(key)]
    if users:
        lines.append('basic_auth_users:')
        lines += ['  %s: %s' % (u, yaml_str(h)) for u, h in users.items()]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def curl(url, user=None, cacert=None, method=None, extra=()):
    """(curl exit code, HTTP status or 0, headers {lower name: value}, body)."""
    args = ['curl', '-sS', '-i', '--max-time', '15', '-w', '\n%{http_code}']
    if user:
        args += ['-u', user]
    if cacert:
        args += ['--cacert', cacert]
    if method:
        args += ['-X', method]
    r = subprocess.run(args + list(extra) + [url], capture_output=True, timeout=30)
    out, _, code = r.stdout.decode(errors='replace').rpartition('\n')
    head, _, body = out.partition('\r\n\r\n')
    headers = {}
    for line in head.split('\r\n')[1:]:
        k, _, v = line.partition(':')
        headers[k.strip().lower()] = v.strip()
    return r.returncode, int(code or 0), headers, body


def source_file(d, name='access.log'):
    path = os.path.join(d, name)
    open(path, 'w').close()
    return path


def assert_metrics_body(body):
    m = promtext.parse(body)
    assert promtext.total(m, 'sshtail_build_info') == 1, body[:500]


def bad_handshakes(host, port, cacert):
    """Clients that fail in the TLS layer, in several ways."""
    # 1. Plain HTTP to the TLS port.
    rc, code, _, body = curl('http://%s:%d/metrics' % (host, port))
    assert code != 200 and 'sshtail_build_info' not in body, (rc, code, body[:200])
    # 2. A TLS version the server refuses (its minimum is TLS 1.2).
    rc, code, _, _ = curl('https://%s:%d/metrics' % (host, port), cacert=cacert,
                          extra=['--tlsv1.0', '--tls-max', '1.1'])
    assert rc != 0 and code == 0, (rc, code)
    # 3. Random bytes, 4. a TLS record header that promises more than is
    # sent, 5. connect and close at once. Each waits for the server to close.
    for payload in (os.urandom(700), b'\x16\x03\x01\x40\x00\x01\x00\x3f\xfc', b''):
        with socket.create_connection((host, port), timeout=10) as s:
            try:  # the server may reset the connection at any point
                if payload:
                    s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
            except OSError:
                pass
    # 6. A client that completes the handshake, then aborts it mid-stream
    # (no close_notify).
    ctx = ssl.create_default_context(cafile=cacert)
    raw = socket.create_connection((host, port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname=host)
    tls.sendall(b'GET /metrics HTTP/1.1\r\nHost: x\r\n')  # unfinished request
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))  # RST
    tls.close()


# ------------------------------------------------------------------- tests

def test_tls_and_basic_auth():
    d = harness.tmpdir()
    cert, key = make_cert(d)
    users = {'alice': bcrypt(PASSWORD, '$2b$'), 'bob': bcrypt(PASSWORD, '$2y$')}
    cfg = write_web_config(os.path.join(d, 'web.yml'), cert, key, users)
    exp = harness.Exporter(['--web.config.file', cfg, source_file(d)], d)
    host, port = exp.address.rsplit(':', 1)
    port = int(port)
    base = 'https://%s:%d' % (host, port)
    right = 'alice:' + PASSWORD

    # Credentials, over TLS verified against the test CA.
    rc, code, headers, _ = curl(base + '/metrics', cacert=cert)
    assert (rc, code) == (0, 401), (rc, code)
    assert headers.get('www-authenticate', '').startswith('Basic '), headers
    for user in ('alice:wrong', 'alice:', 'alice:' + PASSWORD + 'x', 'mallory:' + PASSWORD,
                 'Alice:' + PASSWORD):
        rc, code, _, body = curl(base + '/metrics', user=user, cacert=cert)
        assert (rc, code) == (0, 401), (user, rc, code)
        assert 'sshtail_build_info' not in body
    rc, code, _, body = curl(base + '/metrics', user=right, cacert=cert)
    assert (rc, code) == (0, 200), (rc, code, body[:300])
    assert_metrics_body(body)
    rc, code, _, body = curl(base + '/metrics', user='bob:' + PASSWORD, cacert=cert)
    assert (rc, code) == (0, 200), (rc, code)  # a $2y$ hash (htpasswd -B) works too
    assert_metrics_body(body)
    # A client without the test CA refuses the server (certificate check).
    rc, code, _, _ = curl(base + '/metrics', user=right)
    assert rc == 60 and code == 0, (rc, code)

    # Every endpoint is behind basic auth, /-/healthy and /-/ready included.
    for path, method, ok in (('/', None, 200), ('/metrics', None, 200),
                             ('/-/healthy', None, 200), ('/-/ready', None, 200),
                             ('/-/reload', 'POST', 200), ('/-/reload', 'GET', 405),
                             ('/nonexistent', None, 404)):
        rc, code, _, _ = curl(base + path, cacert=cert, method=method)
        assert (rc, code) == (0, 401), (path, method, rc, code)
        rc, code, _, _ = curl(base + path, user='alice:wrong', cacert=cert, method=method)
        assert (rc, code) == (0, 401), (path, method, rc, code)
        if path == '/-/ready':  # the local file source opens at once
            harness.wait_for(lambda: curl(base + path, user=right, cacert=cert)[1] == 200, 20,
                             0.1, '/-/ready 200')
        rc, code, _, _ = curl(base + path, user=right, cacert=cert, method=method)
        assert (rc, code) == (0, ok), (path, method, rc, code)

    # Broken clients do not take the server down (CivetWeb's TLS crash).
    for _ in range(3):
        bad_handshakes(host, port, cert)
    assert exp.proc.poll() is None, 'exporter died:\n' + exp.logs()
    for i in range(20):
        rc, code, _, body = curl(base + '/metrics', user=right, cacert=cert)
        assert (rc, code) == (0, 200), (i, rc, code)
        assert_metrics_body(body)
    rc, code, _, _ = curl(base + '/metrics', cacert=cert)
    assert (rc, code) == (0, 401)
    assert exp.proc.poll() is None, 'exporter died:\n' + exp.logs()
    assert exp.stop() == 0


def test_basic_auth_without_tls():
    d = harness.tmpdir()
    cfg = write_web_config(os.path.join(d, 'web.yml'), users={'alice': bcrypt(PASSWORD)})
    exp = harness.Exporter(['--web.config.file', cfg, source_file(d)], d)
    rc, code, headers, body = curl(exp.url + '/metrics')
    assert (rc, code) == (0, 401), (rc, code)
    assert headers.get('www-authenticate', '').startswith('Basic '), headers
    assert 'sshtail_build_info' not in body
    for user in ('alice:nope', 'bob:' + PASSWORD):
        assert curl(exp.url + '/metrics', user=user)[:2] == (0, 401), user
    assert curl(exp.url + '/-/healthy')[:2] == (0, 401)
    rc, code, _, body = curl(exp.url + '/metrics', user='alice:' + PASSWORD)
    assert (rc, code) == (0, 200), (rc, code)
    assert_metrics_body(body)
    assert curl(exp.url + '/-/healthy', user='alice:' + PASSWORD)[:2] == (0, 200)
    # No TLS on this port.
    rc, code, _, _ = curl(exp.url.replace('http://', 'https://') + '/metrics', extra=['-k'])
    assert rc != 0 and code == 0, (rc, code)
    assert curl(exp.url + '/metrics', user='alice:' + PASSWORD)[:2] == (0, 200)
    assert exp.stop() == 0


def test_tls_without_auth():
    d = harness.tmpdir()
    cert, key = make_cert(d)
    cfg = write_web_config(os.path.join(d, 'web.yml'), cert, key)
    exp = harness.Exporter(['--web.config.file', cfg, source_file(d)], d)
    base = 'https://' + exp.address
    rc, code, _, body = curl(base + '/metrics', cacert=cert)
    assert (rc, code) == (0, 200), (rc, code)
    assert_metrics_body(body)
    assert curl(base + '/-/healthy', cacert=cert)[:2] == (0, 200)
    rc, code, _, body = curl(exp.url + '/metrics')  # plain http to the TLS port
    assert code != 200 and 'sshtail_build_info' not in body, (rc, code)
    assert curl(base + '/metrics', cacert=cert)[:2] == (0, 200)
    assert exp.stop() == 0


def _bad_configs(d):
    """{what is wrong: path of a web config file with that problem}."""
    cert, key = make_cert(d)
    other = os.path.join(d, 'other')
    os.makedirs(other, exist_ok=True)
    _, other_key = make_cert(other)
    good = bcrypt(PASSWORD)

    def write(name, text):
        path = os.path.join(d, name)
        with open(path, 'w') as f:
            f.write(text)
        return path
    tls = 'tls_server_config:\n  cert_file: %s\n  key_file: %s\n' % (yaml_str(cert), yaml_str(key))
    return {
        'unknown top-level key': write(
            'unknown.yml', 'basic_auth_users:\n  alice: %s\nbogus_key: 1\n' % yaml_str(good)),
        'unknown tls_server_config key': write('unknown_tls.yml', tls + '  no_such_key: x\n'),
        'plain-text password': write(
            'plain.yml', 'basic_auth_users:\n  alice: %s\n' % yaml_str(PASSWORD)),
        'md5-crypt password': write(
            'md5.yml', "basic_auth_users:\n  alice: '$1$abcdefgh$Yx1aQ2R1j6SgmwN4XHeVd/'\n"),
        'cert_file that does not exist': write(
            'nocert.yml', 'tls_server_config:\n  cert_file: %s\n  key_file: %s\n'
            % (yaml_str(os.path.join(d, 'missing.pem')), yaml_str(key))),
        'cert_file without key_file': write(
            'nokey.yml', 'tls_server_config:\n  cert_file: %s\n' % yaml_str(cert)),
        'key_file that does not match cert_file': write(
            'mismatch.yml', 'tls_server_config:\n  cert_file: %s\n  key_file: %s\n'
            % (yaml_str(cert), yaml_str(other_key))),
        'cert_file that is not a certificate': write(
            'notpem.yml', 'tls_server_config:\n  cert_file: %s\n  key_file: %s\n'
            % (yaml_str(write('notpem.pem', 'not a certificate\n')), yaml_str(key))),
        'YAML syntax error': write('syntax.yml', 'basic_auth_users: {alice: [\n'),
    }


def test_bad_web_config_exits_2_with_one_line():
    """Like every bad flag or configuration (README): one line on stderr,
    exit code 2, and it never starts listening."""
    d = harness.tmpdir()
    src = source_file(d)
    problems = []
    for what, cfg in _bad_configs(d).items():
        addr = os.path.join(d, 'addr')
        p = subprocess.Popen([harness.BIN, '--web.listen-address', '127.0.0.1:0',
                              '--web.listen-address-file', addr, '--web.config.file', cfg, src],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            problems.append('%s: accepted (still running after 20s)' % what)
            continue
        lines = err.splitlines()
        if p.returncode != 2 or len(lines) != 1 or not lines[0].strip():
            problems.append('%s: exit %d, stderr %r (want exit 2 and one line)'
                            % (what, p.returncode, err))
        if os.path.exists(addr):
            problems.append('%s: started listening' % what)
            os.unlink(addr)
    assert not problems, '\n'.join(problems)


def test_check_config_rejects_bad_web_config():
    """--check-config loads "config and rules"; the web config is config."""
    d = harness.tmpdir()
    src = source_file(d)
    cert, key = make_cert(d)
    good = write_web_config(os.path.join(d, 'good.yml'), cert, key, {'alice': bcrypt(PASSWORD)})
    r = subprocess.run([harness.BIN, '--check-config', '--web.config.file', good, src],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (r.returncode, r.stderr)
    problems = []
    for what, cfg in _bad_configs(d).items():
        r = subprocess.run([harness.BIN, '--check-config', '--web.config.file', cfg, src],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 2 or len(r.stderr.splitlines()) != 1:
            problems.append('%s: --check-config exit %d, stdout %r, stderr %r (want exit 2, '
                            'one line)' % (what, r.returncode, r.stdout, r.stderr))
    assert not problems, '\n'.join(problems)


def test_ready_and_reload():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    sshd.stop()  # the SSH source cannot connect yet: its port is closed
    harness.wait_for(lambda: not harness.port_open(sshd.port), 10, what='sshd to stop')
    remote = source_file(d, 'remote.log')
    local = source_file(d, 'local.log')
    exp = harness.Exporter(['--ssh.max-backoff', '1s'] + sshd.exporter_args() +
                           [sshd.url(remote), local], d)
    src = '127.0.0.1'
    exp.wait_value('sshtail_source_up', 1, source=local)
    harness.wait_for(lambda: exp.value('sshtail_ssh_reconnects_total', source=src,
                                       reason='refused') >= 1, 30, 0.05, 'a refused connect')
    # One source up, one never connected: not ready (but healthy).
    rc, code, _, body = curl(exp.url + '/-/ready')
    assert (rc, code) == (0, 503), (rc, code, body)
    assert curl(exp.url + '/-/healthy')[:2] == (0, 200)
    assert exp.value('sshtail_source_up', source=src) == 0
    # sshd comes up on that port: every source has connected -> ready.
    sshd.start(sshd.port)
    harness.wait_for(lambda: curl(exp.url + '/-/ready')[1] == 200, 30, 0.1, '/-/ready 200')
    assert exp.value('sshtail_source_up', source=src) == 1
    # A write reaches the exporter through the source that just connected.
    lines, _ = harness.generate(10, 'combined', 3)
    with open(remote, 'a') as f:
        f.write('\n'.join(lines) + '\n')
    exp.wait_value('sshtail_lines_total', 10, source=src)

    # /-/reload: POST reloads, GET is not allowed.
    failed_before = exp.value('sshtail_config_reloads_failed_total')
    rc, code, _, _ = curl(exp.url + '/-/reload', method='POST')
    assert (rc, code) == (0, 200), (rc, code)
    assert exp.value('sshtail_config_last_reload_successful') == 1
    assert exp.value('sshtail_config_reloads_failed_total') == failed_before
    rc, code, headers, _ = curl(exp.url + '/-/reload')
    assert (rc, code) == (0, 405), (rc, code)
    assert 'POST' in headers.get('allow', ''), headers
    assert curl(exp.url + '/-/ready')[:2] == (0, 200)
    assert exp.stop() == 0


if __name__ == '__main__':
    harness.main([test_tls_and_basic_auth, test_basic_auth_without_tls, test_tls_without_auth,
                  test_bad_web_config_exits_2_with_one_line,
                  test_check_config_rejects_bad_web_config, test_ready_and_reload])
