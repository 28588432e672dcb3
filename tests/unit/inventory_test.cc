#include "config/inventory.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

#include "sshtail/rules.h"
#include "test_util.h"

namespace sshtail {
namespace {

std::string ErrorOf(const std::string& file) {
  try {
    LoadInventory({file});
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("file_sd JSON targets become named SSH sources with labels") {
  TempDir d;
  std::string f = d.Write("a.json", R"([
  {"targets": ["web1", "deploy@web2:2222"],
   "labels": {"env": "prod", "__path__": "/var/log/nginx/access.log",
              "__meta_x": "dropped"}},
  {"targets": ["/srv/local.log"], "labels": {"__format__": "main"}}
])");
  auto specs = LoadInventory({f});
  REQUIRE(specs.size() == 3);
  CHECK(specs[0].kind == SourceSpec::Kind::kSsh);
  CHECK(specs[0].host == "web1");
  CHECK(specs[0].path == "/var/log/nginx/access.log");
  CHECK(specs[0].name == "web1");
  CHECK(specs[0].labels.at("env") == "prod");
  CHECK(specs[0].labels.at("file") == "/var/log/nginx/access.log");
  CHECK(specs[0].labels.count("__meta_x") == 0);
  CHECK(specs[0].config_file == f);
  CHECK(specs[0].config_line == 2);
  CHECK(specs[1].user == "deploy");
  CHECK(specs[1].port == 2222);
  CHECK(specs[2].kind == SourceSpec::Kind::kFile);
  CHECK(specs[2].format == "main");
  CHECK(specs[2].name.empty());  // named like any local file (ResolveNames)
}

TEST_CASE("file_sd YAML, globs in __path__ and in the file list") {
  TempDir d;
  d.Write("a.yml",
          "- targets: [web1]\n"
          "  labels: {__path__: '/var/log/nginx/{vhost}.access.log'}\n");
  d.Write("b.yml", "[]\n");  // no targets
  auto specs = LoadInventory({d.path + "/*.yml", d.path + "/none-*.json"});
  REQUIRE(specs.size() == 1);
  CHECK(specs[0].glob);
  CHECK(specs[0].name.empty());  // each match is named when found
  CHECK(specs[0].labels.count("file") == 0);
}

TEST_CASE("an empty file_sd file is refused, not taken as no targets") {
  // Written with `gen > targets.json`, it is empty for a moment: a reload
  // then must keep the running sources (issue 23, defect 12).
  TempDir d;
  CHECK(ErrorOf(d.Write("e.json", "")) ==
        d.path +
            "/e.json:1: the sources file is empty (write [] for no "
            "targets)");
  CHECK(ErrorOf(d.Write("w.yml", "  \n\n")) ==
        d.path +
            "/w.yml:1: the sources file is empty (write [] for no "
            "targets)");
  CHECK(LoadInventory({d.Write("n.json", "[]")}).empty());
}

TEST_CASE("a bad file_sd file is refused with file:line") {
  TempDir d;
  CHECK(ErrorOf(d.Write("1.json", "[{\"targets\": [\"web1\"]}]")) ==
        d.path +
            "/1.json:1: target 'web1' needs a __path__ label with the "
            "log's absolute path");
  CHECK(ErrorOf(d.Write("2.yml",
                        "- targets: [web1]\n  labels: {source: x, "
                        "__path__: /a.log}\n")) ==
        d.path + "/2.yml:2: invalid label name 'source'");
  CHECK(ErrorOf(d.Write("3.yml", "- targets: [web1]\n  lables: {}\n")) ==
        d.path +
            "/3.yml:2: unknown key 'lables' in target group (expected "
            "targets, labels)");
  CHECK(ErrorOf(d.Write("4.yml",
                        "- targets: ['web 1']\n  labels: "
                        "{__path__: /a.log}\n"))
            .rfind(d.path + "/4.yml:1: ", 0) == 0);
  CHECK(ErrorOf(d.Write("5.json", "[{\"targets\": [\"web1\"],")) != "");
  CHECK(ErrorOf(d.path + "/missing.json") ==
        d.path + "/missing.json: cannot read sources file");
  CHECK(ErrorOf(d.Write("6.yml", "targets: [web1]\n")) ==
        d.path + "/6.yml:1: a sources file is a list of {targets, labels}");
}

TEST_CASE("InventoryWatch notices an edit, a new file and a removal") {
  TempDir d;
  std::string a = d.Write("a.yml", "[]\n");
  InventoryWatch w({d.path + "/*.yml"});
  CHECK_FALSE(w.Changed());
  CHECK_FALSE(w.Changed());
  d.Write("a.yml", "[]\n\n");
  CHECK(w.Changed());
  CHECK_FALSE(w.Changed());
  std::string b = d.Write("b.yml", "[]\n");
  CHECK(w.Changed());
  ::unlink(b.c_str());
  CHECK(w.Changed());
  CHECK_FALSE(w.Changed());
}

}  // namespace
}  // namespace sshtail
