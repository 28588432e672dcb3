#include "sshtail/exporter.h"

int main(int argc, char** argv) { return sshtail::Main(argc, argv); }
