"""The Debian package: scripts/package builds build/sshtail-exporter_*.deb,
lintian finds no error in it, and on this machine it installs (the `sshtail`
system user and /var/lib/sshtail_exporter appear), its shipped config passes
--check-config, the installed binary run as `sshtail` counts a log exactly
(and serves TLS, i.e. finds its shims in /usr/lib/sshtail_exporter), the
unit passes `systemd-analyze verify`, a reinstall keeps an edited conffile,
`dpkg -r` leaves the user, state and config, and `dpkg -P` removes them.

Needs root (dpkg -i). Skipped when not root, when the package is already
installed, or when an account named sshtail exists that the package did not
make; SSHTAIL_TEST_PACKAGE=0 skips it too. SSHTAIL_DEB=path uses that .deb
instead of running scripts/package. Everything installed is purged at the
end, so the machine is left as it was."""
import glob
import grp
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request

import harness
import promtext

SRC = os.path.abspath(harness.SOURCE_DIR)
PKG = 'sshtail-exporter'
USER = 'sshtail'
STATE = '/var/lib/sshtail_exporter'
CONF = '/etc/sshtail_exporter/sshtail.yml'
EXE = '/usr/bin/sshtail_exporter'
UNIT = '/usr/lib/systemd/system/sshtail_exporter.service'
SHIM_DIR = '/usr/lib/sshtail_exporter'


def run(args, check=True, timeout=600, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError('%s exited %d\n%s\n%s' % (args, r.returncode, r.stdout, r.stderr))
    return r


def dpkg(*args):
    """dpkg, waiting while another dpkg/apt holds the lock."""
    for _ in range(120):
        r = run(['dpkg'] + list(args), check=False)
        if r.returncode == 0 or 'lock' not in r.stderr:
            break
        time.sleep(5)
    assert r.returncode == 0, ('dpkg %s' % ' '.join(args), r.stdout, r.stderr)
    return r


def status():
    r = run(['dpkg-query', '-W', '-f=${db:Status-Abbrev}', PKG], check=False)
    return r.stdout.strip() if r.returncode == 0 else ''


def user_exists(name=USER):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def group_exists(name=USER):
    try:
        return grp.getgrnam(name)
    except KeyError:
        return None


def skip_reason():
    if os.environ.get('SSHTAIL_TEST_PACKAGE') == '0':
        return 'SSHTAIL_TEST_PACKAGE=0'
    if os.geteuid() != 0:
        return 'not root (dpkg -i needs it)'
    if not shutil.which('dpkg-deb'):
        return 'not a dpkg system'
    if status().startswith('i') or status().startswith('r'):
        return '%s is already installed here (%s); not touching it' % (PKG, status())
    u = user_exists()
    if u and u.pw_dir != STATE:
        return 'an account named %s exists (home %s) that is not the package\'s' % (USER, u.pw_dir)
    return None


def as_sshtail(args, groups=None, **kw):
    """Runs args as user sshtail (uid, gid and supplementary groups set, as
    systemd's User=/Group=/SupplementaryGroups= do)."""
    cmd = ['setpriv', '--reuid', USER, '--regid', USER]
    cmd += ['--groups', ','.join(groups)] if groups else ['--clear-groups']
    return subprocess.run(cmd + ['--'] + list(args), capture_output=True, text=True,
                          timeout=300, **kw)


def build_deb():
    deb = os.environ.get('SSHTAIL_DEB')
    if deb:
        return deb, None
    start = time.monotonic()
    r = run([os.path.join(SRC, 'scripts', 'package')], check=False, cwd=SRC, timeout=1500)
    took = time.monotonic() - start
    assert r.returncode == 0, 'scripts/package failed:\n%s\n%s' % (r.stdout[-4000:], r.stderr[-4000:])
    out = r.stdout
    debs = glob.glob(os.path.join(SRC, 'build', PKG + '_*.deb'))
    path = out.strip().splitlines()[-1]
    assert path in debs, (path, debs)
    assert 'lintian: no errors' in out, out
    lint = out[out.index('== lintian'):]
    print('  scripts/package: %.0fs; lintian:\n    %s'
          % (took, '\n    '.join(l for l in lint.splitlines()[1:] if l[:2] in ('W:', 'I:', 'E:'))),
          flush=True)
    return path, out


def check_deb_contents(deb):
    version = run(['dpkg-deb', '-f', deb, 'Version']).stdout.strip()
    arch = run(['dpkg-deb', '-f', deb, 'Architecture']).stdout.strip()
    assert os.path.basename(deb) == '%s_%s_%s.deb' % (PKG, version, arch), deb
    assert arch == run(['dpkg', '--print-architecture']).stdout.strip()
    depends = run(['dpkg-deb', '-f', deb, 'Depends']).stdout
    # From dpkg-shlibdeps: the libraries the binary links, with versions.
    for lib in ('libssh-4 (>=', 'libre2-9', 'libprometheus-cpp-core1.0', 'libyaml-cpp0.7',
                'libcivetweb1', 'libssl3', 'libc6 (>=', 'adduser'):
        assert lib in depends, (lib, depends)
    files = run(['dpkg-deb', '-c', deb]).stdout
    for f in (EXE, SHIM_DIR + '/libsshtail-ssl-shim.so', SHIM_DIR + '/libsshtail-crypto-shim.so',
              UNIT, CONF, '/usr/share/sshtail_exporter/rules/nginx.yml',
              '/usr/share/sshtail_exporter/rules/routes.yml',
              '/usr/share/sshtail_exporter/grafana/alerts.yml',
              '/usr/share/sshtail_exporter/grafana/dashboards/nginx-overview.json',
              '/usr/share/doc/%s/copyright' % PKG, '/usr/share/doc/%s/changelog.gz' % PKG,
              '/usr/share/doc/%s/examples/logrotate/nginx' % PKG):
        assert ' .%s' % f in files, '%s not in the package' % f
    assert ' root/root ' in files and '/var/lib' not in files, files
    d = harness.tmpdir()
    run(['dpkg-deb', '-e', deb, d])
    with open(os.path.join(d, 'conffiles')) as f:
        assert f.read().split() == [CONF]
    for script in ('postinst', 'prerm', 'postrm'):
        assert os.stat(os.path.join(d, script)).st_mode & 0o777 == 0o755, script


def check_installed():
    assert status() == 'ii', status()
    u = user_exists()
    assert u, 'postinst did not create user %s' % USER
    assert u.pw_uid < 1000 and u.pw_dir == STATE and u.pw_shell == '/usr/sbin/nologin', u
    g = group_exists()
    assert g and u.pw_gid == g.gr_gid, (u, g)
    st = os.stat(STATE)
    assert st.st_uid == u.pw_uid and st.st_gid == g.gr_gid and st.st_mode & 0o777 == 0o750, (
        oct(st.st_mode), st.st_uid)
    assert os.stat(CONF).st_uid == 0
    r = run([EXE, '--version'])
    assert r.stdout.strip(), r
    # The shipped config and every shipped rule file load.
    for args in (['--config', CONF],) + tuple(
            ['--rules', p] for p in sorted(glob.glob('/usr/share/sshtail_exporter/rules/*.yml'))):
        r = as_sshtail([EXE, '--check-config'] + args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    # The systemd unit, as installed (ExecStart names the installed binary).
    with open(UNIT) as f:
        unit = f.read()
    assert 'ExecStart=%s --config %s' % (EXE, CONF) in unit, unit
    assert '/usr/local' not in unit, unit
    if shutil.which('systemd-analyze'):
        r = run(['systemd-analyze', 'verify', UNIT], check=False, timeout=120)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and 'sshtail_exporter' not in out, out
        r = run(['systemd-analyze', 'security', '--offline=yes', '--no-pager', UNIT], check=False)
        exposure = [l for l in r.stdout.splitlines() if 'Overall exposure' in l]
        print('  systemd-analyze verify: ok; %s' % (exposure[0].strip() if exposure else ''),
              flush=True)
    else:
        print('note: no systemd-analyze; unit not verified', flush=True)


def check_once_as_sshtail():
    d = harness.tmpdir()
    log = os.path.join(d, 'access.log')
    truth = harness.generate_file(log, 20000, 'timed', seed=12)
    r = as_sshtail([EXE, '--once', '--format', 'timed', log])
    assert r.returncode == 0, r.stderr
    harness.check_truth(promtext.parse(r.stdout), truth, log)

    # Debian's /var/log/nginx: the logs are root:adm 0640 (nginx's logrotate
    # `create 0640 www-data adm`). Without group adm the user cannot read
    # them; with it (SupplementaryGroups=adm, or `adduser sshtail adm`) it
    # can, and counts exactly.
    logs = os.path.join(d, 'nginx')
    os.makedirs(logs)
    adm_log = os.path.join(logs, 'access.log')
    shutil.copy(log, adm_log)
    shutil.chown(logs, 'root', 'adm')
    shutil.chown(adm_log, 'www-data' if user_exists('www-data') else 'root', 'adm')
    os.chmod(logs, 0o750)
    os.chmod(adm_log, 0o640)
    r = as_sshtail([EXE, '--once', '--format', 'timed', adm_log])
    assert r.returncode == 1, (r.returncode, r.stderr)
    r = as_sshtail([EXE, '--once', '--format', 'timed', adm_log], groups=['adm'])
    assert r.returncode == 0, r.stderr
    harness.check_truth(promtext.parse(r.stdout), truth, adm_log)


def check_server_as_sshtail():
    """Server mode with TLS (the shims from /usr/lib/sshtail_exporter) and
    the positions file in the state directory, as the unit runs it."""
    if not shutil.which('openssl'):
        print('note: no openssl command; server check without TLS', flush=True)
    d = harness.tmpdir()
    log = os.path.join(d, 'access.log')
    truth = harness.generate_file(log, 5000, 'timed', seed=13)
    args = [EXE, '--format', 'timed', '--start-at', 'beginning',
            '--positions-file', STATE + '/positions.yml',
            '--web.listen-address', '127.0.0.1:0',
            '--web.listen-address-file', STATE + '/addr', log]
    scheme = 'http'
    if shutil.which('openssl'):
        cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
        run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
             '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-keyout', key, '-out', cert])
        shutil.chown(key, USER, USER)
        os.chmod(key, 0o600)
        web = harness.write_file(d, 'web.yml', 'tls_server_config:\n  cert_file: %s\n'
                                 '  key_file: %s\n' % (cert, key))
        args[1:1] = ['--web.config.file', web]
        scheme = 'https'
    proc = subprocess.Popen(['setpriv', '--reuid', USER, '--regid', USER, '--clear-groups', '--']
                            + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    harness._cleanups.append(lambda: harness.stop_process(proc))
    addr = STATE + '/addr'
    harness.wait_for(lambda: os.path.exists(addr) or proc.poll() is not None, 30,
                     what='installed exporter to listen')
    assert proc.poll() is None, proc.stdout.read()
    with open(addr) as f:
        url = '%s://%s/metrics' % (scheme, f.read().strip())
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def lines():
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            m = promtext.parse(r.read().decode())
        return promtext.total(m, 'sshtail_lines_total', source=log) == truth['lines'] and m
    m = harness.wait_for(lines, 30, 0.1, 'all lines in /metrics')
    harness.check_truth(m, truth, log)
    proc.terminate()
    assert proc.wait(30) == 0, proc.stdout.read()
    pos = STATE + '/positions.yml'
    assert os.path.exists(pos) and os.stat(pos).st_uid == user_exists().pw_uid, pos
    os.unlink(addr)


def check_reinstall_keeps_conffile(deb):
    with open(CONF, 'a') as f:
        f.write('# edited by test_package\n')
    dpkg('-i', deb)
    with open(CONF) as f:
        assert f.read().endswith('# edited by test_package\n'), 'reinstall replaced the conffile'
    assert status() == 'ii'


def check_remove_and_purge(files):
    dpkg('-r', PKG)
    assert status() == 'rc', status()
    for f in (EXE, UNIT, SHIM_DIR + '/libsshtail-ssl-shim.so'):
        assert not os.path.exists(f), '%s left after dpkg -r' % f
    assert user_exists() and group_exists(), 'dpkg -r removed the user'
    assert os.path.exists(STATE + '/positions.yml'), 'dpkg -r removed the state directory'
    assert os.path.exists(CONF), 'dpkg -r removed the conffile'

    dpkg('-P', PKG)
    assert status() == '', status()
    assert not user_exists() and not group_exists(), 'dpkg -P left the user or group'
    assert not os.path.exists(STATE), 'dpkg -P left %s' % STATE
    assert not os.path.exists(os.path.dirname(CONF)), 'dpkg -P left /etc/sshtail_exporter'
    left = [f for f in files if os.path.isfile(f) or os.path.islink(f)]
    assert not left, 'files left after purge: %s' % left


def purge_leftovers(had_user):
    if status():
        dpkg('-P', PKG)
    if not had_user and user_exists():
        run(['userdel', USER], check=False)
    if not had_user and group_exists():
        run(['groupdel', USER], check=False)


def test_package_install_run_remove():
    deb, _ = build_deb()
    check_deb_contents(deb)
    had_user = bool(user_exists())
    harness._cleanups.append(lambda: purge_leftovers(had_user))
    dpkg('-i', deb)
    files = [l for l in run(['dpkg', '-L', PKG]).stdout.splitlines() if l.strip()]
    check_installed()
    check_once_as_sshtail()
    check_server_as_sshtail()
    check_reinstall_keeps_conffile(deb)
    check_remove_and_purge(files)


if __name__ == '__main__':
    why = skip_reason()
    if why:
        print('SKIP test_package: %s' % why, flush=True)
        sys.exit(0)
    harness.main([test_package_install_run_remove])
