"""Deployment files: the example config loads, the Docker image's runtime
stage has a package for every library the binary links, the Kubernetes
sidecar shares the log and its format with the exporter (and that nginx
config really produces lines the exporter parses), the systemd unit's
sandbox lets the exporter write what the example config makes it write, and
scripts/demo runs end to end. The sharded StatefulSet runs as replicas of
the binary, each with its pod's host name, sharing hosts of a real sshd."""
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import harness
import promtext

SRC = os.path.abspath(harness.SOURCE_DIR)
BIN = os.path.abspath(harness.BIN)
EXAMPLE_CONFIG = os.path.join(SRC, 'deploy', 'sshtail.yml')
DOCKERFILE = os.path.join(SRC, 'Dockerfile')
SIDECAR = os.path.join(SRC, 'deploy', 'kubernetes', 'sidecar.yaml')
STATEFULSET = os.path.join(SRC, 'deploy', 'kubernetes', 'statefulset.yaml')
UNIT = os.path.join(SRC, 'deploy', 'systemd', 'sshtail_exporter.service')
DEMO = os.path.join(SRC, 'scripts', 'demo')

# nginx's combined format, and `timed` = combined + request/upstream times
# (README, Formats).
COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent"')
FORMATS = {'combined': COMBINED,
           'timed': COMBINED + ' $request_time $upstream_response_time'}

# Boolean flags (take no value); every other --flag takes one.
BOOL_FLAGS = {'--once', '--check-config', '--ssh.accept-new-host-keys', '--ssh.sudo',
              '--help', '--version'}

# Packages of debian:bookworm-slim that provide libraries ldd may report:
# glibc (libc, libm, libresolv, ld-linux), libgcc_s and libstdc++ (apt
# itself needs the last two).
BASE_IMAGE_PACKAGES = {'libc6', 'libgcc-s1', 'libstdc++6'}


def yaml_module():
    try:
        import yaml
        return yaml
    except ImportError:
        print('note: python3 module yaml is missing (Debian: python3-yaml); '
              'skipping the YAML parts of this check', flush=True)
        return None


# ------------------------------------------------------------ example config

def test_example_config_passes_check_config():
    r = subprocess.run([BIN, '--check-config', '--config', EXAMPLE_CONFIG],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    yaml = yaml_module()
    if yaml is None:
        return
    with open(EXAMPLE_CONFIG) as f:
        cfg = yaml.safe_load(f)
    assert cfg['format'] == 'timed', cfg.get('format')
    assert cfg['positions-file'] == '/var/lib/sshtail_exporter/positions.yml'
    srcs = cfg['sources']
    ssh = [s for s in srcs if str(s['url']).startswith('ssh://')]
    local = [s for s in srcs if str(s['url']).startswith('/')]
    assert len(ssh) >= 3 and local, srcs
    assert any(s.get('sudo') is True for s in ssh), 'no source with sudo: true'
    assert all(s.get('name') and {'dc', 'role'} <= set(s.get('labels', {})) for s in srcs), srcs
    names = [s['name'] for s in srcs]
    assert len(set(names)) == len(names), names
    for key in ('identity-file', 'known-hosts', 'heartbeat-interval'):
        assert key in cfg['ssh'], key
    assert cfg['web']['listen-address']
    # A key that is not a flag is rejected: the check above means something.
    d = harness.tmpdir()
    bad = os.path.join(d, 'bad.yml')
    with open(EXAMPLE_CONFIG) as f:
        text = f.read()
    with open(bad, 'w') as f:
        f.write(text.replace('positions-file:', 'position-file:'))
    r = subprocess.run([BIN, '--check-config', '--config', bad], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown setting 'position-file'" in r.stderr, r.stderr


# ---------------------------------------------------------------- Dockerfile

def dockerfile_stages(path):
    """[(from_line, [(INSTRUCTION, args)])], continuation lines joined."""
    with open(path) as f:
        raw = f.read().splitlines()
    instructions, cur = [], ''
    for line in raw:
        s = line.strip()
        if not cur and (not s or s.startswith('#')):
            continue
        if cur and s.startswith('#'):  # comment inside a continued RUN
            continue
        if s.endswith('\\'):
            cur += s[:-1] + ' '
            continue
        cur += s
        instructions.append(cur)
        cur = ''
    stages = []
    for ins in instructions:
        word, _, args = ins.partition(' ')
        word = word.upper()
        if word == 'FROM':
            stages.append((args.strip(), []))
        elif stages:
            stages[-1][1].append((word, args.strip()))
    return stages


def apt_installed_packages(runs):
    """Package names of every `apt-get install` in these RUN commands."""
    pkgs = set()
    for run in runs:
        for part in re.split(r'&&|;|\|\|', run):
            words = shlex.split(part)
            while words and '=' in words[0]:  # VAR=value apt-get ...
                words.pop(0)
            if words[:2] not in (['apt-get', 'install'], ['apt', 'install']):
                continue
            assert '--no-install-recommends' in words, part
            pkgs |= {w for w in words[2:] if not w.startswith('-')}
    return pkgs


def packages_of(libs):
    """{library path: Debian package owning it}, merged-/usr aware, with one
    dpkg -S call (it is slow)."""
    candidates = {}
    for lib in libs:
        for p in (lib, os.path.realpath(lib)):
            for c in (p, p[len('/usr'):] if p.startswith('/usr/') else '/usr' + p):
                candidates.setdefault(c, lib)
    r = subprocess.run(['dpkg', '-S'] + sorted(candidates), capture_output=True, text=True)
    owner = {}
    for line in r.stdout.splitlines():
        pkgs, _, path = line.partition(': ')
        if path in candidates:
            owner.setdefault(candidates[path], pkgs.split(',')[0].split(':')[0].strip())
    missing = [l for l in libs if l not in owner]
    assert not missing, 'dpkg -S finds no package for %s' % missing
    return owner


def ldd_libraries(path):
    r = subprocess.run(['ldd', path], capture_output=True, text=True, check=True)
    libs = []
    for line in r.stdout.splitlines():
        assert 'not found' not in line, line
        m = re.search(r'=>\s*(/\S+)', line) or re.match(r'\s*(/\S+)', line)
        if m:
            libs.append(m.group(1))
    return libs


def package_known(pkg):
    r = subprocess.run(['dpkg-query', '-W', '-f=${Status}', pkg], capture_output=True, text=True)
    if r.returncode == 0 and 'installed' in r.stdout:
        return True
    r = subprocess.run(['apt-cache', 'show', '--no-all-versions', pkg], capture_output=True,
                       text=True)
    return r.returncode == 0 and 'Package: %s' % pkg in r.stdout


def check_image_layout_serves_tls(exe, shim_dir):
    """The binary and the shims laid out as in the image (under a temp
    root): TLS from --web.config.file works, i.e. the shims are found."""
    if not shutil.which('openssl'):
        print('note: no openssl command; skipping the TLS layout check', flush=True)
        return
    d = harness.tmpdir()
    root = os.path.join(d, 'root')
    os.makedirs(root + os.path.dirname(exe))
    os.makedirs(root + shim_dir, exist_ok=True)
    shutil.copy(BIN, root + exe)
    for shim in ('libsshtail-ssl-shim.so', 'libsshtail-crypto-shim.so'):
        shutil.copy(os.path.join(os.path.dirname(BIN), shim), root + shim_dir)
    cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
                    '-keyout', key, '-out', cert], check=True, capture_output=True)
    web = os.path.join(d, 'web.yml')
    with open(web, 'w') as f:
        f.write('tls_server_config:\n  cert_file: %s\n  key_file: %s\n' % (cert, key))
    log = os.path.join(d, 'access.log')
    open(log, 'w').close()
    addr = os.path.join(d, 'addr')
    proc = subprocess.Popen([root + exe, '--web.config.file', web, '--web.listen-address',
                             '127.0.0.1:0', '--web.listen-address-file', addr, log],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    harness._cleanups.append(lambda: (proc.poll() is None and proc.kill(), proc.wait()))
    harness.wait_for(lambda: os.path.exists(addr) or proc.poll() is not None, 30,
                     what='exporter with TLS to listen')
    assert proc.poll() is None, 'exporter in the image layout: %s' % proc.stdout.read()
    with open(addr) as f:
        address = f.read().strip()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen('https://%s/-/healthy' % address, context=ctx, timeout=10) as r:
        assert r.status == 200
    proc.terminate()
    assert proc.wait(30) == 0


def test_dockerfile_runtime_stage():
    stages = dockerfile_stages(DOCKERFILE)
    assert len(stages) >= 2, 'not a multi-stage build'
    build_from, build = stages[0]
    assert re.search(r'AS\s+\w+', build_from, re.I), build_from
    build_runs = ' '.join(a for w, a in build if w == 'RUN')
    assert 'scripts/deps build' in build_runs, 'the build stage does not run scripts/deps build'
    assert '-DSSHTAIL_TESTS=OFF' in build_runs and 'cmake --build build' in build_runs

    runtime_from, runtime = stages[-1]
    args = {}  # ARG defaults, for FROM ${DEBIAN_IMAGE}
    with open(DOCKERFILE) as f:
        for line in f:
            if line.startswith('ARG ') and '=' in line:
                k, v = line[4:].strip().split('=', 1)
                args[k] = v
    image = re.sub(r'\$\{(\w+)\}', lambda m: args.get(m.group(1), m.group(0)), runtime_from)
    assert image.split()[0] == 'debian:bookworm-slim', runtime_from
    installed = apt_installed_packages([a for w, a in runtime if w == 'RUN'])
    assert 'openssh-client' in installed, installed
    assert not installed & {'gcc', 'g++', 'make', 'build-essential', 'clang', 'curl', 'wget'}, installed
    for pkg in installed:
        assert package_known(pkg), 'no Debian package named %s' % pkg
    runs = ' '.join(a for w, a in runtime if w == 'RUN')
    assert 'rm -rf /var/lib/apt/lists' in runs, 'apt lists are not cleaned'

    # Every library the binary and its TLS shims load, by package.
    objs = [BIN] + [os.path.join(os.path.dirname(BIN), s) for s in
                    ('libsshtail-ssl-shim.so', 'libsshtail-crypto-shim.so')
                    if os.path.exists(os.path.join(os.path.dirname(BIN), s))]
    libs = sorted({lib for obj in objs for lib in ldd_libraries(obj)})
    needed = {}
    for lib, pkg in packages_of(libs).items():
        needed.setdefault(pkg, set()).add(os.path.basename(lib))
    missing = {p: sorted(l) for p, l in needed.items()
               if p not in BASE_IMAGE_PACKAGES and p not in installed}
    assert not missing, 'runtime stage lacks packages for: %s' % missing
    print('  runtime packages cover %d libraries from %d packages'
          % (sum(len(v) for v in needed.values()), len(needed)), flush=True)

    words = [w for w, _ in runtime]
    users = [a for w, a in runtime if w == 'USER']
    assert users, 'no USER in the runtime stage'
    assert users[-1].split(':')[0] not in ('root', '0'), users[-1]
    assert any(w == 'EXPOSE' and '9923' in a.split() for w, a in runtime), 'no EXPOSE 9923'
    assert 'ENTRYPOINT' in words
    entry = json.loads([a for w, a in runtime if w == 'ENTRYPOINT'][-1])
    exe = entry[0]
    copies = [a.split() for w, a in runtime if w == 'COPY']
    assert any(c[-1] in (exe, os.path.dirname(exe) + '/') for c in copies), (exe, copies)
    # The shims next to the binary or in <bin>/../lib/sshtail_exporter.
    shim_dirs = {os.path.dirname(exe),
                 os.path.normpath(os.path.join(os.path.dirname(exe), '../lib/sshtail_exporter'))}
    shim_copies = [c for c in copies if c[-1].rstrip('/') in shim_dirs and
                   any('shim' in x or 'lib/sshtail_exporter' in x for x in c[:-1])]
    assert shim_copies, ('TLS shims are not copied where %s finds them' % exe, copies)
    check_image_layout_serves_tls(exe, shim_copies[0][-1].rstrip('/'))
    labels = ' '.join(a for w, a in runtime if w == 'LABEL')
    for l in ('title', 'description', 'source', 'licenses', 'version'):
        assert 'org.opencontainers.image.%s' % l in labels, l

    with open(os.path.join(SRC, '.dockerignore')) as f:
        ignored = {l.strip() for l in f if l.strip() and not l.startswith('#')}
    assert '.git' in ignored and ('build' in ignored or 'build*/' in ignored), ignored


# -------------------------------------------------------------- Kubernetes

def nginx_directives(conf, name):
    """Arguments of every `name ...;` directive (quoted strings joined)."""
    out = []
    for m in re.finditer(r'(?m)^\s*%s\s+((?:[^;\'"]|\'[^\']*\'|"[^"]*")*);' % name, conf):
        out.append(m.group(1))
    return out


def nginx_log_formats(conf):
    formats = {}
    for args in nginx_directives(conf, 'log_format'):
        fname, rest = args.split(None, 1)
        rest = re.sub(r'^escape=\S+\s+', '', rest)
        formats[fname] = ''.join(re.findall(r"'([^']*)'", rest))
    return formats


def exporter_sources(args):
    """Positional SOURCE arguments of an exporter command line."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.startswith('--'):
            skip = '=' not in a and a not in BOOL_FLAGS
        else:
            out.append(a)
    return out


def flag_value(args, name):
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + '='):
            return a.split('=', 1)[1]
    return None


def mount_of(container, path):
    """(volume name, path inside the volume) of the mount holding path."""
    best = None
    for m in container.get('volumeMounts', []):
        mp = m['mountPath'].rstrip('/')
        if path == mp or path.startswith(mp + '/'):
            if best is None or len(mp) > len(best[2]):
                best = (m['name'], os.path.relpath(path, mp), mp)
    assert best, '%s is on no volume of container %s' % (path, container['name'])
    return best[0], best[1]


def write_local_nginx_conf(c, d, port, html):
    """Writes `c`, a shipped nginx.conf, runnable unprivileged in `d`:
    pid, error log and temp paths in `d`, listening on 127.0.0.1:`port`,
    serving `html` (created with an index page). Returns its path."""
    os.makedirs(html)
    with open(os.path.join(html, 'index.html'), 'w') as f:
        f.write('hi\n')
    c = re.sub(r'(?m)^(\s*)pid\s+\S+;', r'\1pid %s/nginx.pid;' % d, c)
    c = re.sub(r'(?m)^(\s*)listen\s+\d+\s*;', r'\1listen 127.0.0.1:%d;' % port, c)
    c = re.sub(r'(?m)^(\s*)root\s+\S+;', r'\1root %s;' % html, c)
    c = re.sub(r'(?m)^(\s*)error_log\s+\S+', r'\1error_log %s/error.log' % d, c)
    if not os.path.exists('/etc/nginx/mime.types'):
        c = re.sub(r'(?m)^\s*include\s+/etc/nginx/mime.types;', '', c)
    temps = ''.join('  %s_temp_path %s/%s;\n' % (t, d, t)
                    for t in ('client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'))
    c = c.replace('http {', 'http {\n' + temps, 1)
    c = 'daemon off;\n' + c
    conf_path = os.path.join(d, 'nginx.conf')
    with open(conf_path, 'w') as f:
        f.write(c)
    return conf_path


def run_sidecar_nginx_conf(conf, fmt):
    """Runs the sidecar's nginx.conf (paths moved into a temp dir), sends
    requests, and checks that `--once --format fmt` parses every line."""
    d = harness.tmpdir()
    port = harness.free_port()
    logs = os.path.join(d, 'logs')
    html = os.path.join(d, 'html')
    os.makedirs(logs)
    conf_path = write_local_nginx_conf(conf.replace('/var/log/nginx/', logs + '/'),
                                       d, port, html)
    os.chmod(d, 0o755)
    for p in (html, logs):
        os.chmod(p, 0o755)
    nginx = shutil.which('nginx') or '/usr/sbin/nginx'
    t = subprocess.run([nginx, '-t', '-p', d, '-c', conf_path, '-e', os.path.join(d, 'error.log')],
                       capture_output=True, text=True)
    assert t.returncode == 0, t.stderr
    proc = subprocess.Popen([nginx, '-p', d, '-c', conf_path, '-e', os.path.join(d, 'error.log')],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness._cleanups.append(lambda: (proc.poll() is None and proc.terminate(), proc.wait(10)))
    harness.wait_for(lambda: harness.port_open(port) or proc.poll() is not None, 10,
                     what='sidecar nginx to listen')
    assert proc.poll() is None, 'sidecar nginx.conf does not start nginx'
    codes = {}
    for path in ('/', '/index.html', '/missing', '/healthz', '/nope?x=1'):
        try:
            with urllib.request.urlopen('http://127.0.0.1:%d%s' % (port, path), timeout=5) as r:
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        codes[code] = codes.get(code, 0) + 1
    access = os.path.join(logs, 'access.log')
    # /healthz is not logged: 4 lines; nginx writes them before answering.
    harness.wait_for(lambda: os.path.exists(access) and
                     open(access).read().count('\n') == 4, 10, what='4 access log lines')
    r = harness.run_once(['--format', fmt, access])
    assert r.returncode == 0, r.stderr
    m = promtext.parse(r.stdout)
    assert promtext.total(m, 'sshtail_lines_total') == 4, r.stdout
    assert promtext.total(m, 'sshtail_lines_unmatched_total') == 0, open(access).read()
    assert promtext.total(m, 'nginx_http_requests_total', status='200') == 2
    assert promtext.total(m, 'nginx_http_requests_total', status='404') == 2
    if fmt == 'timed':
        assert promtext.total(m, 'nginx_http_request_duration_seconds_count') == 4


def run_sidecar_nginx_conf_syslog(conf, fmt, source):
    """Runs the sidecar's nginx.conf with its syslog target moved to a free
    port (or a socket in a temp dir) and the exporter receiving there; every
    logged request is counted and parses as --format."""
    d = harness.tmpdir()
    if source.startswith('syslog+udp://'):
        old_target = source[len('syslog+udp://'):]
        new_target = '127.0.0.1:%d' % harness.free_port()
        url = 'syslog+udp://' + new_target
    else:
        old_target = 'unix:' + source[len('syslog+unix://'):]
        sock = os.path.join(d, 'nginx.sock')
        new_target = 'unix:' + sock
        url = 'syslog+unix://' + sock
    assert conf.count('server=' + old_target) >= 1, (old_target, conf)
    exp = harness.Exporter(['--format', fmt, url], d)
    if url.startswith('syslog+unix://'):
        os.chmod(sock, 0o666)  # root's nginx workers run as nobody
    port = harness.free_port()
    html = os.path.join(d, 'html')
    conf_path = write_local_nginx_conf(
        conf.replace('server=' + old_target, 'server=' + new_target), d, port, html)
    nginx = shutil.which('nginx') or '/usr/sbin/nginx'
    proc = subprocess.Popen([nginx, '-p', d, '-c', conf_path, '-e', os.path.join(d, 'error.log')],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness._cleanups.append(lambda: harness.stop_process(proc))
    harness.wait_for(lambda: harness.port_open(port) or proc.poll() is not None, 10,
                     what='sidecar nginx to listen')
    assert proc.poll() is None, 'sidecar nginx.conf does not start nginx'
    for path in ('/', '/index.html', '/missing', '/healthz', '/nope?x=1'):
        try:
            urllib.request.urlopen('http://127.0.0.1:%d%s' % (port, path), timeout=5).close()
        except urllib.error.HTTPError:
            pass
    # /healthz is not logged: 4 lines.
    exp.wait_value('sshtail_lines_total', 4, timeout=10)
    m = exp.metrics()
    assert promtext.total(m, 'sshtail_lines_unmatched_total') == 0, exp.logs()
    assert promtext.total(m, 'sshtail_syslog_datagrams_malformed_total') == 0
    assert promtext.total(m, 'nginx_http_requests_total', status='200') == 2
    assert promtext.total(m, 'nginx_http_requests_total', status='404') == 2
    if fmt == 'timed':
        assert promtext.total(m, 'nginx_http_request_duration_seconds_count') == 4
    exp.stop()


def test_kubernetes_sidecar():
    yaml = yaml_module()
    if yaml is None:
        return
    with open(SIDECAR) as f:
        docs = [x for x in yaml.safe_load_all(f) if x]
    kinds = {x['kind']: x for x in docs}
    for k in ('ConfigMap', 'Deployment', 'Service', 'ServiceMonitor'):
        assert k in kinds, 'no %s in %s' % (k, SIDECAR)
    pod = kinds['Deployment']['spec']['template']
    spec = pod['spec']
    volumes = {v['name']: v for v in spec['volumes']}
    containers = {c['name']: c for c in spec['containers']}
    exp = [c for c in containers.values() if 'sshtail' in c['image']]
    web = [c for c in containers.values() if 'nginx' in c['image']]
    assert len(exp) == 1 and len(web) == 1, list(containers)
    exp, web = exp[0], web[0]

    # The exporter receives nginx's syslog, or follows a file on an emptyDir
    # that nginx mounts too.
    args = exp.get('command', [])[1:] + exp.get('args', [])
    sources = exporter_sources(args)
    assert sources, args
    fmt = flag_value(args, '--format') or 'combined'
    assert fmt == 'timed', fmt

    # nginx.conf from the ConfigMap, mounted where nginx reads it.
    cm = kinds['ConfigMap']
    conf_mounts = [m for m in web['volumeMounts']
                   if volumes[m['name']].get('configMap', {}).get('name') == cm['metadata']['name']]
    assert conf_mounts, 'the nginx container does not mount the ConfigMap'
    cm_key = conf_mounts[0].get('subPath') or 'nginx.conf'
    assert conf_mounts[0]['mountPath'] in ('/etc/nginx/nginx.conf', '/etc/nginx/conf.d/' + cm_key)
    conf = cm['data'][cm_key]
    formats = nginx_log_formats(conf)
    access_logs = [a.split() for a in nginx_directives(conf, 'access_log') if a.split()[0] != 'off']
    assert access_logs, 'nginx.conf has no access_log'
    syslog_sources = [x for x in sources if x.startswith('syslog+')]
    for src in syslog_sources:
        # nginx sends to the exporter's socket: the same address (loopback of
        # the pod), or the same socket file on a shared emptyDir.
        sent = []
        for al in access_logs:
            if not al[0].startswith('syslog:'):
                continue
            params = dict(p.split('=', 1) if '=' in p else (p, '')
                          for p in al[0][len('syslog:'):].split(','))
            server = params.get('server', '')
            if src.startswith('syslog+udp://'):
                if server == src[len('syslog+udp://'):]:
                    assert server.startswith(('127.', '[::1]')), \
                        'the syslog port is reachable from outside the pod: %s' % server
                    sent.append(al)
            elif server.startswith('unix:'):
                sock = src[len('syslog+unix://'):]
                vol, rel = mount_of(exp, sock)
                wvol, wrel = mount_of(web, server[len('unix:'):])
                if (vol, rel) == (wvol, wrel):
                    assert 'emptyDir' in volumes[vol], '%s is not on an emptyDir' % sock
                    assert not [m for m in exp['volumeMounts']
                                if m['name'] == vol and m.get('readOnly')], \
                        'the exporter creates the socket: its volume must be writable'
                    sent.append(al)
        assert sent, '%s: nginx sends no access_log there (%s)' % (src, access_logs)
        for al in sent:
            assert len(al) >= 2 and al[1] in formats, 'access_log %s has no named format' % al
            assert formats[al[1]] == FORMATS[fmt], (al, formats[al[1]], FORMATS[fmt])
    # No volume of the pod grows with traffic when nginx logs to syslog.
    if syslog_sources and not [x for x in sources if not x.startswith('syslog+')]:
        for v in volumes.values():
            if 'emptyDir' in v:
                assert v['emptyDir'].get('medium') == 'Memory' or \
                    v['emptyDir'].get('sizeLimit') in ('1Mi', '64Ki'), v
    for src in [x for x in sources if not x.startswith('syslog+')]:
        vol, rel = mount_of(exp, src)
        assert 'emptyDir' in volumes[vol], '%s is not on an emptyDir' % src
        written = []
        for al in access_logs:
            wvol, wrel = mount_of(web, al[0])
            if wvol == vol and wrel == rel:
                written.append(al)
        assert written, '%s: nginx writes no access_log there (%s)' % (src, access_logs)
        for al in written:
            assert len(al) >= 2 and al[1] in formats, 'access_log %s has no named format' % al
            assert formats[al[1]] == FORMATS[fmt], (
                'nginx writes format %r:\n  %s\nthe exporter expects --format %s:\n  %s'
                % (al[1], formats[al[1]], fmt, FORMATS[fmt]))

    # Non-root, read-only root filesystem, resources, probes, port.
    sc = dict(spec.get('securityContext', {}))
    sc.update(exp.get('securityContext', {}))
    assert sc.get('runAsNonRoot') is True and sc.get('runAsUser', 1) != 0, sc
    assert sc.get('readOnlyRootFilesystem') is True, sc
    assert sc.get('allowPrivilegeEscalation') is False, sc
    res = exp['resources']
    assert {'cpu', 'memory'} <= set(res['requests']) and {'cpu', 'memory'} <= set(res['limits'])
    ports = {p['name']: p['containerPort'] for p in exp['ports']}
    assert ports.get('metrics') == 9923, ports
    listen = flag_value(args, '--web.listen-address')
    assert listen is None or listen.endswith(':9923'), listen
    assert exp['livenessProbe']['httpGet']['path'] == '/-/healthy'
    assert exp['readinessProbe']['httpGet']['path'] == '/-/ready'
    for probe in ('livenessProbe', 'readinessProbe'):
        assert exp[probe]['httpGet']['port'] in ('metrics', 9923), exp[probe]
    # The image's user owns nothing on the read-only root: every path the
    # exporter writes must be on a volume.
    pos = flag_value(args, '--positions-file')
    if pos:
        vol, _ = mount_of(exp, pos)
        assert not [m for m in exp['volumeMounts'] if m['name'] == vol and m.get('readOnly')]

    # Service + annotations + ServiceMonitor.
    svc = kinds['Service']
    sel = svc['spec']['selector']
    assert all(pod['metadata']['labels'].get(k) == v for k, v in sel.items()), sel
    svc_ports = {p['name']: p for p in svc['spec']['ports']}
    assert svc_ports['metrics']['port'] == 9923, svc_ports
    ann = dict(pod['metadata'].get('annotations', {}))
    ann.update(svc['metadata'].get('annotations', {}))
    assert ann.get('prometheus.io/scrape') == 'true' and ann.get('prometheus.io/port') == '9923'
    sm = kinds['ServiceMonitor']
    assert sm['apiVersion'] == 'monitoring.coreos.com/v1'
    ml = sm['spec']['selector']['matchLabels']
    assert all(svc['metadata']['labels'].get(k) == v for k, v in ml.items()), ml
    assert [e for e in sm['spec']['endpoints'] if e.get('port') == 'metrics'], sm['spec']

    # The ConfigMap's nginx.conf, run for real: its lines parse as --format.
    if syslog_sources:
        run_sidecar_nginx_conf_syslog(conf, fmt, syslog_sources[0])
    else:
        run_sidecar_nginx_conf(conf, fmt)


# ----------------------------------------------------- Kubernetes, sharded

def k8s_docs(path):
    yaml = yaml_module()
    with open(path) as f:
        return [x for x in yaml.safe_load_all(f) if x]


def config_value(cfg, dotted):
    """A setting of the exporter's config file, written `a.b: v` or nested."""
    if dotted in cfg:
        return cfg[dotted]
    cur = cfg
    for part in dotted.split('.'):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def set_config_value(cfg, dotted, value):
    if dotted in cfg or '.' not in dotted:
        cfg[dotted] = value
        return
    head, rest = dotted.split('.', 1)
    if isinstance(cfg.get(head), dict):
        set_config_value(cfg[head], rest, value)
    else:
        cfg[dotted] = value


def mount_or_none(container, path):
    try:
        return mount_of(container, path)
    except AssertionError:
        return None


def relabel(labels, configs):
    """Prometheus' relabeling (replace, keep, drop) of a target's labels;
    None if it is dropped. Takes the Prometheus Operator's spelling too
    (sourceLabels, targetLabel)."""
    out = dict(labels)
    for c in configs:
        src = c.get('source_labels', c.get('sourceLabels', []))
        value = c.get('separator', ';').join(out.get(l, '') for l in src)
        m = re.fullmatch(c.get('regex', '(.*)'), value)
        action = c.get('action', 'replace').lower()
        if action == 'keep' and not m:
            return None
        if action == 'drop' and m:
            return None
        if action == 'replace' and m:
            target = c.get('target_label', c.get('targetLabel'))
            repl = re.sub(r'\$\{?(\w+)\}?', r'\\g<\1>', c.get('replacement', '$1'))
            new = m.expand(repl)
            if new:
                out[target] = new
            else:
                out.pop(target, None)
    return out


def write_configmap_volume(directory, data, mode=0o644):
    """Writes `data` ({key: text}) into `directory` as the kubelet fills a
    configMap or secret volume, and updates it as the kubelet does: the
    files go into a new timestamped directory, a new `..data` symlink to it
    is renamed over the old one, and every key is a symlink through
    `..data`. A watched key thus becomes another file (inode) at once."""
    os.makedirs(directory, exist_ok=True)
    stamp = '..%s.%d' % (time.strftime('%Y_%m_%d_%H_%M_%S'), time.monotonic_ns())
    os.mkdir(os.path.join(directory, stamp))
    for k, v in data.items():
        path = os.path.join(directory, stamp, k)
        with open(path, 'w') as f:
            f.write(v)
        os.chmod(path, mode)
    link = os.path.join(directory, '..data')
    old = os.readlink(link) if os.path.islink(link) else None
    os.symlink(stamp, link + '_tmp')
    os.rename(link + '_tmp', link)
    for k in data:
        if not os.path.lexists(os.path.join(directory, k)):
            os.symlink(os.path.join('..data', k), os.path.join(directory, k))
    if old:
        shutil.rmtree(os.path.join(directory, old))


def uts_namespaces_work():
    r = subprocess.run(['unshare', '--uts', 'sh', '-c', 'hostname sshtail-0 && hostname'],
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == 'sshtail-0'


def pod_command(pod, argv, uts):
    """`argv` as the StatefulSet's pod `pod` runs it: its host name is the
    pod's name, in a UTS namespace of its own, so that `--shard.index auto`
    reads it with gethostname(). Without namespaces (`uts` False) the index
    is given explicitly instead."""
    if uts:
        return ['unshare', '--uts', 'sh', '-c', 'hostname "$0" && exec "$@"', pod] + argv
    argv = list(argv)
    i = argv.index('--shard.index')
    argv[i + 1] = pod.rsplit('-', 1)[1]
    return argv


class Pod(harness.Exporter):
    """A replica of the StatefulSet: the binary with the container's args,
    under the pod's host name (harness.Exporter's start otherwise)."""

    def __init__(self, pod, args, workdir, uts):
        self.workdir = workdir
        self.addr_file = os.path.join(workdir, pod + '.addr')
        self.log_path = os.path.join(workdir, pod + '.log')
        if os.path.exists(self.addr_file):
            os.unlink(self.addr_file)
        self.args = pod_command(pod, [BIN, '--web.listen-address', '127.0.0.1:0',
                                      '--web.listen-address-file', self.addr_file] + list(args),
                                uts)
        self.log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        harness._cleanups.append(self.kill)
        harness.wait_for(lambda: os.path.exists(self.addr_file) or self.proc.poll() is not None,
                         30, what='%s to listen' % pod)
        if self.proc.poll() is not None:
            raise AssertionError('%s exited with %s:\n%s' % (pod, self.proc.returncode, self.logs()))
        with open(self.addr_file) as f:
            self.address = f.read().strip()
        self.url = 'http://%s' % self.address


def check_statefulset_scrape_configs(by_kind, pod_labels, svc):
    """The ServiceMonitor selects the headless service and names each
    target after its pod; the plain scrape config (a ConfigMap snippet)
    passes promtool and keeps the replicas, one target each, with the pod's
    name as `instance`."""
    yaml = yaml_module()
    sms = by_kind['ServiceMonitor']
    assert len(sms) == 1, sms
    sm = sms[0]
    assert sm['apiVersion'] == 'monitoring.coreos.com/v1'
    ml = sm['spec']['selector']['matchLabels']
    assert ml and all(svc['metadata']['labels'].get(k) == v for k, v in ml.items()), ml
    eps = [e for e in sm['spec']['endpoints'] if e.get('port') == 'metrics']
    assert eps, sm['spec']
    got = relabel({'__meta_kubernetes_pod_name': 'sshtail-1', 'instance': '10.1.2.3:9923',
                   '__address__': '10.1.2.3:9923'}, eps[0].get('relabelings', []))
    assert got and got['instance'] == 'sshtail-1', ('ServiceMonitor: instance is not the pod', got)

    snippets = [(c, k, v) for c in by_kind['ConfigMap'] for k, v in c.get('data', {}).items()
                if 'scrape_configs' in v]
    assert len(snippets) == 1, 'no scrape config snippet (or several)'
    text = snippets[0][2]
    jobs = yaml.safe_load(text)['scrape_configs']
    assert len(jobs) == 1, jobs
    job = jobs[0]
    sds = job['kubernetes_sd_configs']
    assert sds and all(s['role'] in ('pod', 'endpoints') for s in sds), sds

    def meta(pod, labels, port_name, port):
        m = {'__address__': '10.1.2.3:%d' % port, '__meta_kubernetes_pod_name': pod,
             '__meta_kubernetes_namespace': 'monitoring',
             '__meta_kubernetes_pod_container_port_name': port_name,
             '__meta_kubernetes_pod_container_port_number': str(port),
             '__meta_kubernetes_endpoint_port_name': port_name,
             '__meta_kubernetes_service_name': svc['metadata']['name']}
        for k, v in labels.items():
            m['__meta_kubernetes_pod_label_' + re.sub(r'[^a-zA-Z0-9_]', '_', k)] = v
        return m
    kept = relabel(meta('sshtail-2', pod_labels, 'metrics', 9923), job.get('relabel_configs', []))
    assert kept and kept['instance'] == 'sshtail-2', kept
    other = relabel(meta('web-7f9c', {'app.kubernetes.io/name': 'web'}, 'metrics', 9923),
                    job.get('relabel_configs', []))
    assert other is None, ('the scrape config keeps pods that are not replicas', other)
    if shutil.which('promtool'):
        d = harness.tmpdir()
        path = harness.write_file(d, 'prometheus.yml', text)
        r = subprocess.run(['promtool', 'check', 'config', '--syntax-only', path],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 and 'field kubernetes_sd_configs not found' in r.stdout + r.stderr:
            # Debian's Prometheus is built without Kubernetes discovery:
            # check the rest of the job (relabeling) with a static target.
            print('note: this promtool has no kubernetes_sd_configs (Debian builds it '
                  'without); checking the job with static_configs instead', flush=True)
            job = dict(job)
            job.pop('kubernetes_sd_configs')
            job['static_configs'] = [{'targets': ['10.1.2.3:9923']}]
            harness.write_file(d, 'prometheus.yml', yaml.safe_dump({'scrape_configs': [job]}))
            r = subprocess.run(['promtool', 'check', 'config', '--syntax-only', path],
                               capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        print('note: no promtool; the scrape config snippet is not checked by it', flush=True)


def test_kubernetes_statefulset():
    yaml = yaml_module()
    if yaml is None:
        return
    import test_shard  # the exporter's rendezvous hashing, its writer and overlap check
    by_kind = {}
    for x in k8s_docs(STATEFULSET):
        by_kind.setdefault(x['kind'], []).append(x)
    for k in ('ConfigMap', 'Secret', 'Service', 'StatefulSet', 'PersistentVolumeClaim',
              'ServiceMonitor'):
        assert k in by_kind, 'no %s in %s' % (k, STATEFULSET)
    assert len(by_kind['StatefulSet']) == 1
    sts = by_kind['StatefulSet'][0]
    name = sts['metadata']['name']
    spec = sts['spec']
    pod = spec['template']
    pspec = pod['spec']
    pod_labels = pod['metadata']['labels']
    assert all(pod_labels.get(k) == v for k, v in spec['selector']['matchLabels'].items())
    assert spec.get('podManagementPolicy') == 'Parallel', spec.get('podManagementPolicy')
    replicas = spec['replicas']
    assert replicas >= 2, replicas

    # The headless service the StatefulSet names, selecting its pods.
    svcs = {s['metadata']['name']: s for s in by_kind['Service']}
    assert spec['serviceName'] in svcs, (spec['serviceName'], list(svcs))
    svc = svcs[spec['serviceName']]
    assert svc['spec'].get('clusterIP') == 'None', 'the service is not headless'
    sel = svc['spec']['selector']
    assert sel and all(pod_labels.get(k) == v for k, v in sel.items()), sel
    svc_ports = {p['name']: p for p in svc['spec']['ports']}
    assert svc_ports['metrics']['port'] == 9923, svc_ports
    assert svc_ports['metrics'].get('targetPort', 9923) in ('metrics', 9923), svc_ports

    exps = [c for c in pspec['containers'] if 'sshtail' in c['image']]
    assert len(exps) == 1, [c['name'] for c in pspec['containers']]
    exp = exps[0]
    args = exp.get('command', [])[1:] + exp.get('args', [])
    assert flag_value(args, '--shard.index') == 'auto', args
    assert flag_value(args, '--shard.count') is None, \
        'a --shard.count flag wins over the ConfigMap: the count would not reload'
    assert not exporter_sources(args), 'sources belong in the inventory every replica reads'
    volumes = {v['name']: v for v in pspec.get('volumes', [])}
    templates = {t['metadata']['name']: t for t in spec.get('volumeClaimTemplates', [])}
    pvcs = {p['metadata']['name']: p for p in by_kind['PersistentVolumeClaim']}
    mounts = {m['name']: m for m in exp['volumeMounts']}
    for m in exp['volumeMounts']:
        assert m['name'] in volumes or m['name'] in templates, m

    # --shard.dir on the claim every replica shares (RWX); --state-file on
    # the replica's own claim.
    shard_dir = flag_value(args, '--shard.dir')
    assert shard_dir, args
    shard_vol, _ = mount_of(exp, shard_dir)
    assert 'persistentVolumeClaim' in volumes.get(shard_vol, {}), \
        '--shard.dir %s is not on a shared claim (%s)' % (shard_dir, shard_vol)
    claim = volumes[shard_vol]['persistentVolumeClaim']['claimName']
    assert claim in pvcs, (claim, list(pvcs))
    assert pvcs[claim]['spec']['accessModes'] == ['ReadWriteMany'], pvcs[claim]['spec']
    state = flag_value(args, '--state-file')
    assert state, args
    state_vol, _ = mount_of(exp, state)
    assert state_vol in templates and state_vol not in volumes, \
        '--state-file %s is not on a per-replica volumeClaimTemplate' % state
    assert 'ReadWriteOnce' in templates[state_vol]['spec']['accessModes']
    for v in (shard_vol, state_vol):
        assert not mounts[v].get('readOnly'), '%s is written by the exporter' % v

    # The config: from a ConfigMap mounted as a directory (a subPath mount
    # never sees an update), shard.count equal to the replicas.
    config = flag_value(args, '--config')
    assert config, args
    cm_vol, cm_key = mount_of(exp, config)
    assert 'configMap' in volumes[cm_vol], volumes[cm_vol]
    assert 'subPath' not in mounts[cm_vol], 'a subPath mount of a ConfigMap is never updated'
    cms = {c['metadata']['name']: c for c in by_kind['ConfigMap']}
    cm = cms[volumes[cm_vol]['configMap']['name']]
    cfg = yaml.safe_load(cm['data'][cm_key])
    assert config_value(cfg, 'shard.count') == replicas, (config_value(cfg, 'shard.count'), replicas)
    inventories = config_value(cfg, 'sources_files') or []
    assert inventories, 'no sources_files in %s' % cm_key
    inv_keys = []
    for f in inventories:
        v, k = mount_of(exp, f)
        assert v == cm_vol and k in cm['data'], (f, 'not in the ConfigMap')
        inv_keys.append(k)
        groups = yaml.safe_load(cm['data'][k])
        assert groups and all(g['targets'] for g in groups), groups
        for g in groups:
            assert g['labels'].get('__path__', '').startswith('/'), g
    listen = config_value(cfg, 'web.listen-address') or flag_value(args, '--web.listen-address')
    assert listen is None or listen.endswith(':9923'), listen

    # SSH: the key and known_hosts from the Secret; host keys are checked.
    assert not config_value(cfg, 'ssh.accept-new-host-keys'), \
        'accept-new-host-keys: each replica would trust hosts anew after every move'
    secrets = {s['metadata']['name']: s for s in by_kind['Secret']}
    secret_keys = {}
    for setting in ('ssh.identity-file', 'ssh.known-hosts'):
        paths = config_value(cfg, setting)
        assert paths, setting
        for p in paths if isinstance(paths, list) else [paths]:
            v, k = mount_of(exp, p)
            assert 'secret' in volumes[v], (setting, p, 'not from a Secret')
            sec = secrets[volumes[v]['secret']['secretName']]
            assert k in dict(sec.get('stringData', {}), **sec.get('data', {})), (k, 'not in the Secret')
            mode = volumes[v]['secret'].get('defaultMode', 0o644)
            assert mode & 0o007 == 0, 'the SSH key is readable by every user: %o' % mode
            secret_keys[setting] = (v, k)
    ssh_config = config_value(cfg, 'ssh.config')
    ssh_config_key = None
    if ssh_config and ssh_config != 'none':
        v, ssh_config_key = mount_of(exp, ssh_config)
        assert v == cm_vol and ssh_config_key in cm['data'], ssh_config

    # Non-root, read-only root, resources, probes on the named port.
    psc = pspec.get('securityContext', {})
    sc = dict(psc)
    sc.update(exp.get('securityContext', {}))
    assert sc.get('runAsNonRoot') is True and sc.get('runAsUser', 1) != 0, sc
    assert sc.get('readOnlyRootFilesystem') is True, sc
    assert sc.get('allowPrivilegeEscalation') is False, sc
    mode = volumes[secret_keys['ssh.identity-file'][0]]['secret'].get('defaultMode', 0o644)
    assert mode & 0o004 or (mode & 0o040 and psc.get('fsGroup') == sc.get('runAsGroup')), \
        'the exporter\'s user cannot read the SSH key (mode %o, fsGroup %s)' % (mode, psc.get('fsGroup'))
    res = exp['resources']
    assert {'cpu', 'memory'} <= set(res['requests']) and {'cpu', 'memory'} <= set(res['limits'])
    ports = {p['name']: p['containerPort'] for p in exp['ports']}
    assert ports.get('metrics') == 9923, ports
    assert exp['livenessProbe']['httpGet']['path'] == '/-/healthy'
    assert exp['readinessProbe']['httpGet']['path'] == '/-/ready'
    for probe in ('livenessProbe', 'readinessProbe'):
        assert exp[probe]['httpGet']['port'] in ('metrics', 9923), exp[probe]
    grace = pspec.get('terminationGracePeriodSeconds', 30)
    assert grace >= 30, grace
    # Scraped once: a generic annotation job besides the ServiceMonitor or
    # the scrape config would count every request twice in the dashboards.
    for meta in (pod['metadata'], svc['metadata']):
        assert 'prometheus.io/scrape' not in meta.get('annotations', {}), meta
    check_statefulset_scrape_configs(by_kind, pod_labels, svc)

    # ---- Run it: the replicas, their volumes in a temp dir.
    uts = uts_namespaces_work()
    if not uts:
        print('note: unshare --uts does not work here; --shard.index is given explicitly',
              flush=True)
    d = harness.tmpdir()

    def host_dir(vol, ordinal):
        if vol in templates:  # <template>-<statefulset>-<ordinal>, as Kubernetes names it
            return os.path.join(d, 'pvc', '%s-%s-%d' % (vol, name, ordinal))
        if 'persistentVolumeClaim' in volumes[vol]:
            return os.path.join(d, 'pvc', volumes[vol]['persistentVolumeClaim']['claimName'])
        return os.path.join(d, 'vol', vol)

    def remap(path, ordinal=None):
        vol, rel = mount_of(exp, path)
        assert ordinal is not None or vol not in templates, \
            '%s is on a per-replica volume but in the shared config' % path
        return os.path.normpath(os.path.join(host_dir(vol, ordinal), rel))

    def remap_tree(x):
        if isinstance(x, dict):
            return {k: remap_tree(v) for k, v in x.items()}
        if isinstance(x, list):
            return [remap_tree(v) for v in x]
        if isinstance(x, str) and x.startswith('/') and mount_or_none(exp, x):
            return remap(x)
        return x

    def pod_args(ordinal):
        out, i = [], 0
        while i < len(args):
            a = args[i]
            if a == '--web.listen-address':  # Pod listens on a free port
                i += 2
                continue
            out.append(remap(a, ordinal) if a.startswith('/') else a)
            i += 1
        return out

    for v in list(volumes) + list(templates):
        for o in range(replicas):
            os.makedirs(host_dir(v, o), exist_ok=True)
    live_cfg = remap_tree(cfg)

    def configmap(count, test_data):
        set_config_value(live_cfg, 'shard.count', count)
        data = dict(cm['data'])
        data[cm_key] = yaml.safe_dump(live_cfg)
        data.update(test_data)
        write_configmap_volume(host_dir(cm_vol, None), data)

    # The shipped ConfigMap as is passes --check-config as pod 0.
    configmap(replicas, {})
    sec_vol = secret_keys['ssh.identity-file'][0]
    write_configmap_volume(host_dir(sec_vol, None), {
        secret_keys['ssh.identity-file'][1]: 'placeholder\n',
        secret_keys['ssh.known-hosts'][1]: '# placeholder\n'}, mode=0o440)
    r = subprocess.run(pod_command('%s-0' % name, [BIN, '--check-config'] + pod_args(0), uts),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)

    # A real sshd as the fleet: HOSTS hosts (aliases of ssh_config), FILES
    # logs each, an inventory group per log.
    HOSTS, FILES = 9, 2
    sshd = harness.Sshd(d)
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    os.chmod(logs, 0o755)
    hosts = ['web%d' % h for h in range(HOSTS)]
    files, groups = [], []
    for h in hosts:
        for k in range(FILES):
            p = os.path.join(logs, '%s-%d.access.log' % (h, k))
            open(p, 'w').close()
            os.chmod(p, 0o644)
            files.append(p)
            groups.append({'targets': [h], 'labels': {'env': 'test', '__path__': p}})
    host_of = {p: os.path.basename(p).split('-')[0] for p in files}
    fleet = {inv_keys[0]: yaml.safe_dump(groups)}
    for k in inv_keys[1:]:
        fleet[k] = '[]\n'
    if ssh_config_key:
        fleet[ssh_config_key] = ''.join(
            'Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n' % (h, sshd.port, sshd.user)
            for h in hosts)
    with open(sshd.key) as f:
        key = f.read()
    with open(sshd.known_hosts) as f:
        known = f.read()
    write_configmap_volume(host_dir(sec_vol, None), {secret_keys['ssh.identity-file'][1]: key,
                                                     secret_keys['ssh.known-hosts'][1]: known},
                           mode=0o440)
    configmap(replicas, fleet)

    pods = {}

    def start(o):
        pods[o] = Pod('%s-%d' % (name, o), pod_args(o), d, uts)

    def followed():
        out = {}
        for o, p in list(pods.items()):
            for dd, v in promtext.select(p.metrics(), 'sshtail_source_up'):
                if v == 1:
                    out.setdefault(dd['file'], set()).add(o)
        return out

    def settled(count):
        f = followed()
        return (len(f) == len(files) and
                all(r == {test_shard.owner(host_of[p], count)} for p, r in f.items()))

    t0 = time.monotonic()
    for o in range(replicas):
        start(o)
    harness.wait_for(lambda: settled(replicas), 30, 0.2,
                     '%d replicas, every file followed by its one owner' % replicas)
    for o, p in pods.items():
        m = p.metrics()
        assert promtext.total(m, 'sshtail_shard_index') == o, (o, p.logs())
        assert promtext.total(m, 'sshtail_shard_count') == replicas
    assert len({test_shard.owner(h, replicas) for h in hosts}) == replicas, 'a replica has no host'
    print('  %d replicas follow %d files on %d hosts (%.1fs)'
          % (replicas, len(files), HOSTS, time.monotonic() - t0), flush=True)

    lines, _ = harness.generate(6000, 'timed', seed=77)
    w = test_shard.Writer(files, lines, rate=400)
    w.start()
    mon = test_shard.Overlap(pods)
    mon.start()
    time.sleep(1.5)

    # Scale down as the header says: the ConfigMap first, then the pod goes
    # (kubectl scale: SIGTERM). Its hosts are handed over at exit.
    last = replicas - 1
    configmap(last, fleet)
    harness.wait_for(lambda: all(promtext.total(pods[o].metrics(), 'sshtail_shard_count') == last
                                 for o in range(last)), 15, 0.2, 'the new count in every pod')
    t = time.monotonic()
    gone = pods.pop(last)
    assert gone.stop(timeout=grace) == 0, gone.logs()
    stop_s = time.monotonic() - t
    harness.wait_for(lambda: settled(last), 30, 0.2, '%d replicas after the scale-down' % last)
    print('  scaled down to %d: pod %s-%d stopped in %.1fs, its hosts taken over in %.1fs'
          % (last, name, last, stop_s, time.monotonic() - t), flush=True)
    time.sleep(1.5)

    # And up again: the pod comes back with its own state volume; the hosts
    # it had are resumed from their newer handed-over state.
    t = time.monotonic()
    configmap(replicas, fleet)
    start(last)
    harness.wait_for(lambda: settled(replicas), 30, 0.2, '%d replicas after the scale-up' % replicas)
    print('  scaled up to %d in %.1fs' % (replicas, time.monotonic() - t), flush=True)
    time.sleep(1)
    w.stop.set()
    w.join(10)
    mon.finish()
    written = w.written
    assert written > 1000, written

    def total():
        return sum(promtext.total(p.metrics(), 'sshtail_lines_total') for p in pods.values())
    harness.wait_for(lambda: total() >= written, 30, 0.2, '%d lines counted' % written)
    time.sleep(1)
    ms = [p.metrics() for p in pods.values()]
    test_shard.assert_union_exact(ms, files, w, seed=77)
    assert sum(promtext.total(m, 'sshtail_lines_unmatched_total') for m in ms) == 0
    print('  %d lines written, counted once across the replicas' % written, flush=True)
    for o, p in pods.items():
        assert p.stop(timeout=grace) == 0, p.logs()


# ------------------------------------------------------------------ systemd

def read_unit(path):
    """{section: [(key, value)]} (keys may repeat)."""
    out, section = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in '#;':
                continue
            if line.startswith('['):
                section = line.strip('[]')
                out.setdefault(section, [])
                continue
            k, _, v = line.partition('=')
            out[section].append((k.strip(), v.strip()))
    return out


def test_systemd_unit():
    unit = read_unit(UNIT)
    svc = unit['Service']
    one = {}
    for k, v in svc:
        one[k] = v  # the last one wins (CapabilityBoundingSet= resets)
    assert one.get('User') and one['User'] not in ('root', '0'), one.get('User')
    assert one.get('NoNewPrivileges') == 'yes'
    assert one.get('Restart') == 'on-failure'
    assert re.search(r'kill -HUP \$MAINPID', one.get('ExecReload', '')), one.get('ExecReload')
    assert one.get('ProtectSystem') == 'strict' and one.get('ProtectHome') in ('read-only', 'yes')
    assert one.get('CapabilityBoundingSet') == '', one.get('CapabilityBoundingSet')
    for k in ('PrivateTmp', 'PrivateDevices', 'ProtectKernelTunables', 'ProtectKernelModules',
              'ProtectControlGroups', 'RestrictNamespaces', 'LockPersonality',
              'MemoryDenyWriteExecute'):
        assert one.get(k) == 'yes', k
    assert set(one.get('RestrictAddressFamilies', '').split()) == {'AF_INET', 'AF_INET6', 'AF_UNIX'}
    assert one.get('SystemCallArchitectures') == 'native'

    # ExecStart's --config is where the example config says to install it.
    argv = shlex.split(one['ExecStart'])
    config = flag_value(argv, '--config')
    assert config, argv
    with open(EXAMPLE_CONFIG) as f:
        header = f.read(2000)
    assert 'Install as %s' % config in header, (config, 'not named in deploy/sshtail.yml')

    # Every path the exporter writes with that config is writable in the sandbox.
    writable = ['/var/lib/' + s for s in one.get('StateDirectory', '').split()]
    writable += [p.lstrip('-') for k, v in svc if k == 'ReadWritePaths' for p in v.split()]
    yaml = yaml_module()
    if yaml is not None:
        with open(EXAMPLE_CONFIG) as f:
            cfg = yaml.safe_load(f)
        ssh = cfg.get('ssh', {})
        written = [cfg.get('positions-file'),
                   # appended to with accept-new-host-keys (on or turned on later)
                   ssh.get('known-hosts') or cfg.get('ssh.known-hosts'),
                   cfg.get('web', {}).get('listen-address-file')]
        for w in filter(None, written):
            assert any(w.startswith(d.rstrip('/') + '/') for d in writable), (
                '%s is written by the exporter but not writable under %s' % (w, writable))

    if shutil.which('systemd-analyze'):
        d = harness.tmpdir()
        path = os.path.join(d, 'sshtail_exporter.service')
        with open(UNIT) as f:
            text = f.read()
        # The binary is not installed here: verify against the one under test.
        with open(path, 'w') as f:
            f.write(text.replace('/usr/local/bin/sshtail_exporter', BIN))
        r = subprocess.run(['systemd-analyze', 'verify', '--man=no', path],
                           capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and 'sshtail_exporter.service' not in out, out
        r = subprocess.run(['systemd-analyze', 'security', '--offline=yes', '--no-pager', path],
                           capture_output=True, text=True, timeout=60)
        m = re.search(r'Overall exposure level for \S+: ([0-9.]+)', r.stdout)
        if m:
            print('  systemd-analyze security: exposure %s' % m.group(1), flush=True)
            assert float(m.group(1)) <= 3.0, r.stdout
    else:
        print('note: systemd-analyze is not installed; skipping verify', flush=True)


# ---------------------------------------------------------------------- demo

def test_demo_runs_and_shows_traffic():
    env = dict(os.environ, SSHTAIL_BIN=BIN)
    r = subprocess.run([DEMO, '--duration', '20'], cwd=SRC, env=env, capture_output=True,
                       text=True, timeout=300)
    out = r.stdout
    assert r.returncode == 0, 'demo exited %d\n%s\n%s' % (r.returncode, out, r.stderr)
    m = re.search(r'http://127\.0\.0\.1:(\d+)/metrics', out)
    assert m, out
    values = [float(v) for v in
              re.findall(r'^nginx_http_requests_total\{[^}]*\} (\S+)$', out, re.M)]
    assert values and max(values) > 0, out
    lines = [float(v) for v in re.findall(r'^sshtail_lines_total\{[^}]*\} (\S+)$', out, re.M)]
    assert lines and max(lines) > 0, out
    if shutil.which('prometheus'):
        assert re.search(r'Prometheus: +http://127\.0\.0\.1:\d+/', out), out
    # Everything was stopped and removed.
    tmp = re.search(r'files: +(\S+)', out)
    assert tmp and not os.path.exists(tmp.group(1)), out
    port = int(m.group(1))
    assert not harness.port_open(port), 'the exporter still listens after the demo'
    for p in re.findall(r'127\.0\.0\.1:(\d+)', out):
        assert not harness.port_open(int(p)), 'port %s still open after the demo' % p


if __name__ == '__main__':
    harness.main([test_example_config_passes_check_config, test_dockerfile_runtime_stage,
                  test_kubernetes_sidecar, test_kubernetes_statefulset, test_systemd_unit,
                  test_demo_runs_and_shows_traffic])
