/* Empty on purpose: carries SONAME libcrypto.so and depends on libcrypto.so.3,
 * so CivetWeb's dlopen("libcrypto.so") works without libssl-dev installed. */
int sshtail_crypto_shim;
