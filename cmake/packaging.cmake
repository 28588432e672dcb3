# The Debian package (CPack's DEB generator), built by scripts/package:
#   cmake -S . -B build-pkg -DSSHTAIL_PACKAGE=ON -DCMAKE_INSTALL_PREFIX=/usr
#   cmake --build build-pkg && (cd build-pkg && cpack -G DEB)
#
# Installed layout (the binary finds its TLS shims in <bindir>/../lib/
# sshtail_exporter, see web_config.cc):
#   /usr/bin/sshtail_exporter
#   /usr/lib/sshtail_exporter/libsshtail-{ssl,crypto}-shim.so
#   /usr/share/sshtail_exporter/rules/          built-in rules and examples
#   /usr/share/sshtail_exporter/grafana/        dashboards, provisioning, alerts
#   /usr/lib/systemd/system/sshtail_exporter.service
#   /etc/sshtail_exporter/sshtail.yml           conffile (deploy/debian/sshtail.yml)
#   /usr/share/doc/sshtail-exporter/            README, copyright, changelog,
#                                               examples (fleet config, logrotate)
#   /usr/share/man/man1/sshtail_exporter.1.gz
# The `sshtail` user and /var/lib/sshtail_exporter come from the postinst
# (deploy/debian/postinst), not from files in the package.
#
# Without SSHTAIL_PACKAGE only the share/ files are installed (any prefix).

option(SSHTAIL_PACKAGE "Install rules and CPack settings for the .deb" OFF)

set(SSHTAIL_DEB_NAME sshtail-exporter)
set(SSHTAIL_DEB_MAINTAINER
    "sshtail_exporter maintainers <maintainers@users.noreply.r-seed-e60258e3.example>")
set(_deb ${PROJECT_SOURCE_DIR}/deploy/debian)
set(_pkg ${PROJECT_BINARY_DIR}/packaging)

# Rules (nginx.yml is also compiled in) and the Grafana/Prometheus files.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/rules/
        DESTINATION share/sshtail_exporter/rules
        FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
        FILES_MATCHING PATTERN "*.yml")
install(DIRECTORY ${PROJECT_SOURCE_DIR}/grafana/
        DESTINATION share/sshtail_exporter/grafana
        FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
        PATTERN "README.md" EXCLUDE)

if(NOT SSHTAIL_PACKAGE)
  return()
endif()

file(MAKE_DIRECTORY ${_pkg})
set(_docdir share/doc/${SSHTAIL_DEB_NAME})

# Documentation, compressed the way dh_compress does (gzip -9n: no name or
# time stamp, so the package is reproducible).
function(sshtail_gzip src dst)
  execute_process(COMMAND gzip -9nc ${src} OUTPUT_FILE ${dst} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "gzip ${src} failed")
  endif()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${src})
endfunction()
configure_file(${_deb}/changelog.in ${_pkg}/changelog @ONLY)
sshtail_gzip(${_pkg}/changelog ${_pkg}/changelog.gz)
sshtail_gzip(${PROJECT_SOURCE_DIR}/README.md ${_pkg}/README.md.gz)
sshtail_gzip(${PROJECT_SOURCE_DIR}/grafana/README.md ${_pkg}/grafana.md.gz)
sshtail_gzip(${_deb}/sshtail_exporter.1 ${_pkg}/sshtail_exporter.1.gz)
set(_doc_perms PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
install(FILES ${_pkg}/changelog.gz ${_pkg}/README.md.gz ${_pkg}/grafana.md.gz
              ${_deb}/copyright
        DESTINATION ${_docdir} ${_doc_perms})
install(FILES ${PROJECT_SOURCE_DIR}/deploy/sshtail.yml
        DESTINATION ${_docdir}/examples ${_doc_perms})
install(FILES ${PROJECT_SOURCE_DIR}/deploy/logrotate/nginx
        DESTINATION ${_docdir}/examples/logrotate ${_doc_perms})
install(FILES ${_pkg}/sshtail_exporter.1.gz
        DESTINATION share/man/man1 ${_doc_perms})

# The systemd unit of deploy/systemd, with the package's paths and without
# the from-source install steps of its header.
file(READ ${PROJECT_SOURCE_DIR}/deploy/systemd/sshtail_exporter.service _unit)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             ${PROJECT_SOURCE_DIR}/deploy/systemd/sshtail_exporter.service)
string(REGEX REPLACE "# Install[^\n]*\n.*\n# Files the exporter"
       "# Installed by the ${SSHTAIL_DEB_NAME} package, which also creates the user\n# and its state directory; not enabled on install. After editing\n# /etc/sshtail_exporter/sshtail.yml:\n#   systemctl enable --now sshtail_exporter\n# Local changes: systemctl edit sshtail_exporter (e.g. SupplementaryGroups=adm).\n#\n# Files the exporter"
       _unit "${_unit}")
string(REPLACE "/usr/local/bin/sshtail_exporter" "${CMAKE_INSTALL_PREFIX}/bin/sshtail_exporter"
       _unit "${_unit}")
string(REPLACE "[Unit]\n" "[Unit]\nDocumentation=man:sshtail_exporter(1)\n" _unit "${_unit}")
file(WRITE ${_pkg}/sshtail_exporter.service "${_unit}")
install(FILES ${_pkg}/sshtail_exporter.service
        DESTINATION /usr/lib/systemd/system ${_doc_perms})

# The default configuration, a conffile.
install(FILES ${_deb}/sshtail.yml DESTINATION /etc/sshtail_exporter ${_doc_perms})
file(WRITE ${_pkg}/conffiles "/etc/sshtail_exporter/sshtail.yml\n")

# ------------------------------------------------------------------ CPack
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME ${SSHTAIL_DEB_NAME})
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_PACKAGE_DIRECTORY ${PROJECT_BINARY_DIR}/cpack)
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGE_CONTACT "${SSHTAIL_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${SSHTAIL_DEB_MAINTAINER}")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # <name>_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "Prometheus exporter for nginx access logs, local or over SSH")
# The synopsis is the summary above; CPack turns empty lines into " .".
set(CPACK_PACKAGE_DESCRIPTION
"sshtail_exporter follows nginx access logs on the machine it runs on, or on
many remote hosts over SSH with nothing installed there, and turns every new
line into Prometheus counters and histograms. It streams, resumes at the
exact byte after a disconnect, a rotation or a restart, and never counts a
line twice.

This package ships the exporter with its rules, Grafana dashboards and
Prometheus alert rules, a hardened systemd unit (not enabled on install)
and a default configuration.")
# Library dependencies from the binary and the shims (dpkg-shlibdeps), plus
# what the maintainer scripts run.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
# ProxyJump/ProxyCommand hosts in ~/.ssh/config run OpenSSH's client.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "openssh-client")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "nginx, prometheus")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${_pkg}/conffiles ${_deb}/postinst ${_deb}/prerm ${_deb}/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
    OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
    WORLD_READ WORLD_EXECUTE)
# /etc and /usr/lib/systemd are absolute destinations on purpose.
set(CPACK_WARN_ON_ABSOLUTE_INSTALL_DESTINATION OFF)
include(CPack)
