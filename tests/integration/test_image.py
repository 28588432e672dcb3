"""The container image, built and run for real (opt-in: slow).

SSHTAIL_TEST_IMAGE=1 enables it (scripts/test runs it then); otherwise it
prints SKIP and passes. It runs scripts/image (podman build; the base image
is made with debootstrap if missing), then runs the image the way this
machine can without `podman run` (crun cannot run containers here):
`podman image mount`, the root filesystem copied out, /proc and /dev bound
into the copy, a host log directory bound read-only at /logs (a `-v`), and
`chroot --userspec=10001:10001 ROOT /usr/local/bin/sshtail_exporter ...`
with the image's environment. Checked: `--once` counts exactly; the server
follows the log, serves /metrics over TLS (the shims are where the binary
looks) and writes its positions file; the image's user, entrypoint and
port; no compiler, build tool or package manager extra in the runtime
stage, and every program it adds to the Debian base comes from
openssh-client or is the exporter (the full list is printed). Needs root
and podman (`scripts/deps image`)."""
import glob
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

import harness
import promtext

SRC = os.path.abspath(harness.SOURCE_DIR)
IMAGE = os.environ.get('SSHTAIL_IMAGE', 'localhost/sshtail_exporter') + ':latest'
BASE = 'docker.io/library/debian:bookworm-slim'
EXE = '/usr/local/bin/sshtail_exporter'
UID = '10001'
COMPILERS = re.compile(r'^(cc|c\+\+|gcc|g\+\+|cpp|clang|clang\+\+|make|gmake|cmake|ninja|ld|'
                       r'as|tcc|rustc|go)([-.][\w.]+)?$|^(x86_64|aarch64|i686|arm)-.*-(gcc|g\+\+|'
                       r'ld|as|cpp)(-\d+)?$')
BUILD_PACKAGES = re.compile(r'^(gcc|g\+\+|cpp|clang|llvm|binutils|make|cmake|build-essential|'
                            r'libc6-dev|libstdc\+\+-\d+-dev|dpkg-dev|python3|perl|curl|wget|'
                            r'nginx|prometheus)([-.\d].*)?$|-dev$')
PROGRAM_DIRS = ('bin', 'sbin', 'usr/bin', 'usr/sbin', 'usr/local/bin', 'usr/local/sbin')


def run(args, check=True, timeout=1800, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError('%s exited %d\n%s\n%s' % (args, r.returncode, r.stdout[-3000:],
                                                       r.stderr[-3000:]))
    return r


def mounts_under(path):
    path = os.path.realpath(path)
    with open('/proc/mounts') as f:
        points = [l.split()[1].replace('\\040', ' ') for l in f]
    return [p for p in points if p == path or p.startswith(path + '/')]


class Rootfs:
    """A copy of an image's root filesystem with /proc, /dev and binds."""

    def __init__(self, image):
        self.dir = tempfile.mkdtemp(prefix='sshtail-image-')
        harness._cleanups.append(self.remove)
        self.root = os.path.join(self.dir, 'root')
        os.makedirs(self.root)
        mnt = run(['podman', 'image', 'mount', image]).stdout.strip()
        try:
            run(['cp', '-a', mnt + '/.', self.root + '/'], timeout=300)
        finally:
            run(['podman', 'image', 'unmount', image], check=False)
        self.binds = []

    def bind(self, src, dst, readonly=False):
        target = self.root + dst
        os.makedirs(target, exist_ok=True)
        if src == 'proc':
            run(['mount', '-t', 'proc', 'proc', target])
        else:
            run(['mount', '--bind', src, target])
            if readonly:
                run(['mount', '-o', 'remount,bind,ro', target])
        self.binds.append(target)

    def remove(self):
        for t in reversed(self.binds):
            if os.path.ismount(t):
                run(['umount', t], check=False)
        left = mounts_under(self.dir)
        for t in sorted(left, reverse=True):  # not ours, or busy: lazy
            run(['umount', '-l', t], check=False)
        # Never delete through a bind mount (that would be the host's /dev).
        assert not mounts_under(self.dir), 'still mounted: %s' % mounts_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def chroot(self, args, **kw):
        """The image's entrypoint binary as uid/gid 10001, with its ENV."""
        env = {'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
               'HOME': '/home/sshtail', 'USER': 'sshtail'}
        cmd = ['chroot', '--userspec=%s:%s' % (UID, UID), self.root, EXE] + list(args)
        return cmd, env


def dpkg_packages(root):
    pkgs, name = {}, None
    with open(os.path.join(root, 'var/lib/dpkg/status')) as f:
        for line in f:
            if line.startswith('Package: '):
                name = line.split()[1]
            elif line.startswith('Status: ') and line.split()[-1] == 'installed':
                pkgs[name] = True
    return set(pkgs)


def programs(root):
    """{path inside root: owning package or None} of every executable in
    the program directories (merged /usr: bin -> usr/bin counted once)."""
    owners = {}
    for lst in glob.glob(os.path.join(root, 'var/lib/dpkg/info/*.list')):
        pkg = os.path.basename(lst)[:-5].split(':')[0]
        with open(lst) as f:
            for p in f.read().split('\n'):
                if p:
                    owners[p] = pkg
                    if p.startswith('/usr/'):
                        owners[p[4:]] = pkg
                    else:
                        owners['/usr' + p] = pkg
    out = {}
    for d in PROGRAM_DIRS:
        full = os.path.join(root, d)
        if os.path.islink(full) or not os.path.isdir(full):
            continue
        for n in os.listdir(full):
            p = os.path.join(full, n)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                rel = '/' + os.path.join(d, n)
                out[rel] = owners.get(rel)
    return out


def build_image():
    start = time.monotonic()
    r = run([os.path.join(SRC, 'scripts', 'image')], check=False, cwd=SRC, timeout=3600)
    took = time.monotonic() - start
    assert r.returncode == 0, 'scripts/image failed:\n%s\n%s' % (r.stdout[-5000:], r.stderr[-5000:])
    size = run(['podman', 'image', 'ls', '--format', '{{.Repository}}:{{.Tag}} {{.Size}}',
                IMAGE]).stdout.strip()
    print('  scripts/image: %.0fs; %s' % (took, size), flush=True)


def check_image_config():
    cfg = json.loads(run(['podman', 'image', 'inspect', IMAGE]).stdout)[0]['Config']
    assert cfg['User'] == '%s:%s' % (UID, UID), cfg['User']
    assert cfg['Entrypoint'] == [EXE], cfg['Entrypoint']
    assert '9923/tcp' in cfg.get('ExposedPorts', {}), cfg.get('ExposedPorts')


def check_contents(rootfs, base):
    root = rootfs.root
    progs = programs(root)
    compilers = sorted(p for p in progs if COMPILERS.match(os.path.basename(p)) and
                       os.path.basename(p) != 'ld.so')  # the dynamic loader
    assert not compilers, 'compilers or build tools in the runtime image: %s' % compilers
    pkgs = dpkg_packages(root)
    base_pkgs = dpkg_packages(base.root)
    added = sorted(pkgs - base_pkgs)
    bad = [p for p in added if BUILD_PACKAGES.match(p)]
    assert not bad, 'build-time packages in the runtime image: %s' % bad
    base_progs = set(programs(base.root))
    new_progs = {p: o for p, o in progs.items() if p not in base_progs}
    foreign = {p: o for p, o in new_progs.items()
               if p != EXE and o != 'openssh-client'}
    assert not foreign, 'programs beyond the base, openssh-client and the exporter: %s' % foreign
    assert EXE in new_progs, new_progs
    for shim in ('libsshtail-ssl-shim.so', 'libsshtail-crypto-shim.so'):
        assert os.path.exists(root + '/usr/local/lib/sshtail_exporter/' + shim), shim
    shells = sorted(os.path.basename(p) for p in progs
                    if os.path.basename(p) in ('sh', 'dash', 'bash', 'apt', 'apt-get', 'dpkg',
                                               'perl', 'python3', 'curl', 'wget', 'su', 'login'))
    print('  runtime image: %d packages (%d beyond the base: %s)' % (len(pkgs), len(added),
                                                                     ' '.join(added)), flush=True)
    print('  programs added to the base: %s' % ' '.join(sorted(new_progs)), flush=True)
    print('  programs from the Debian slim base: %d, among them %s' % (len(base_progs),
                                                                     ' '.join(shells)), flush=True)


def check_once(rootfs, logs, truth):
    cmd, env = rootfs.chroot(['--once', '--format', 'timed', '/logs/access.log'])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)
    harness.check_truth(promtext.parse(r.stdout), truth, '/logs/access.log')
    # It really is uid 10001: a root-only file is refused.
    secret = os.path.join(logs, 'root-only.log')
    with open(secret, 'w') as f:
        f.write('x\n')
    os.chmod(secret, 0o600)
    cmd, env = rootfs.chroot(['--once', '/logs/root-only.log'])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    os.unlink(secret)


def check_server(rootfs, logs, truth):
    """Server mode as in the Dockerfile's header: TLS from a mounted web
    config, positions in /var/lib/sshtail_exporter."""
    args = ['--format', 'timed', '--start-at', 'beginning',
            '--positions-file', '/var/lib/sshtail_exporter/positions.yml',
            '--web.listen-address', '127.0.0.1:0', '--web.listen-address-file', '/tmp/addr']
    scheme = 'http'
    if shutil.which('openssl'):
        cert, key = os.path.join(logs, 'tls.crt'), os.path.join(logs, 'tls.key')
        run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
             '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-keyout', key, '-out', cert])
        os.chown(key, int(UID), int(UID))
        os.chmod(key, 0o600)
        harness.write_file(logs, 'web.yml', 'tls_server_config:\n  cert_file: /logs/tls.crt\n'
                           '  key_file: /logs/tls.key\n')
        args += ['--web.config.file', '/logs/web.yml']
        scheme = 'https'
    cmd, env = rootfs.chroot(args + ['/logs/access.log'])
    log = open(os.path.join(rootfs.dir, 'server.log'), 'w+')
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    harness._cleanups.append(lambda: harness.stop_process(proc))
    addr = rootfs.root + '/tmp/addr'
    harness.wait_for(lambda: os.path.exists(addr) or proc.poll() is not None, 30,
                     what='exporter in the image to listen')
    assert proc.poll() is None, open(log.name).read()
    with open(addr) as f:
        base = '%s://%s' % (scheme, f.read().strip())
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def get(path):
        with urllib.request.urlopen(base + path, context=ctx, timeout=10) as r:
            return r.status, r.read().decode()

    def counted(n):
        m = promtext.parse(get('/metrics')[1])
        return promtext.total(m, 'sshtail_lines_total', source='/logs/access.log') == n and m

    harness.check_truth(harness.wait_for(lambda: counted(truth['lines']), 30, 0.1,
                                         'the log in /metrics'), truth, '/logs/access.log')
    # Lines appended on the host side of the mount are followed.
    extra, extra_truth = harness.generate(3000, 'timed', seed=32)
    with open(os.path.join(logs, 'access.log'), 'a') as f:
        f.write('\n'.join(extra) + '\n')
    total = truth['lines'] + extra_truth['lines']
    harness.wait_for(lambda: counted(total), 30, 0.1, 'appended lines in /metrics')
    assert get('/-/healthy')[0] == 200 and get('/-/ready')[0] == 200
    proc.terminate()
    assert proc.wait(30) == 0, open(log.name).read()
    pos = rootfs.root + '/var/lib/sshtail_exporter/positions.yml'
    assert os.path.exists(pos) and os.stat(pos).st_uid == int(UID), pos
    print('  server in the image: %s /metrics exact (%d lines), /-/healthy, /-/ready'
          % (scheme, total), flush=True)


def test_image_built_and_run():
    build_image()
    check_image_config()
    rootfs = Rootfs(IMAGE)
    base = Rootfs(BASE)
    check_contents(rootfs, base)
    logs = harness.tmpdir()
    truth = harness.generate_file(os.path.join(logs, 'access.log'), 20000, 'timed', seed=31)
    os.unlink(os.path.join(logs, 'access.log.truth.json'))
    rootfs.bind('proc', '/proc')
    rootfs.bind('/dev', '/dev')
    rootfs.bind(logs, '/logs', readonly=True)
    check_once(rootfs, logs, truth)
    check_server(rootfs, logs, truth)


if __name__ == '__main__':
    why = None
    if os.environ.get('SSHTAIL_TEST_IMAGE') != '1':
        why = 'opt-in, set SSHTAIL_TEST_IMAGE=1 (builds the image: minutes)'
    elif os.geteuid() != 0:
        why = 'needs root (podman image mount, chroot)'
    elif not shutil.which('podman'):
        why = 'no podman (scripts/deps image)'
    if why:
        print('SKIP test_image: %s' % why, flush=True)
        sys.exit(0)
    harness.main([test_image_built_and_run])
