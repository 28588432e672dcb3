/* Gives CivetWeb the SSL_get_peer_certificate it looks up by name; OpenSSL 3
 * only has it as a macro. Built with SONAME libssl.so (see CMakeLists.txt). */
#include <openssl/ssl.h>

#undef SSL_get_peer_certificate
X509 *SSL_get_peer_certificate(const SSL *s);
X509 *SSL_get_peer_certificate(const SSL *s) {
  return SSL_get1_peer_certificate(s);
}
