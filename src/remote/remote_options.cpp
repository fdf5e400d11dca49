#include "remote/remote_options.h"

#include <cstdlib>
#include <iostream>

#include "error.h"

namespace fastdemucs {
namespace {

// An environment variable's value; unset and empty are both "no value".
std::string env_value(const char* name) {
    const char* value = std::getenv(name);
    return value ? std::string(value) : std::string();
}

// Python's os.path.expanduser for the "~" and "~/..." forms torch.hub accepts.
std::string expand_home(const std::string& path) {
    if (path.empty() || path[0] != '~' || (path.size() > 1 && path[1] != '/')) return path;
    const std::string home = env_value("HOME");
    if (home.empty()) throw Error("cannot find the model cache folder: HOME is not set (set TORCH_HOME)");
    return home + path.substr(1);
}

std::string with_trailing_slash(std::string url) {
    if (url.back() != '/') url.push_back('/');
    return url;
}

}  // namespace

std::string resolve_root_url(const std::string& option) {
    if (!option.empty()) return with_trailing_slash(option);
    const std::string from_env = env_value(kModelUrlEnv);
    if (!from_env.empty()) return with_trailing_slash(from_env);
    return kOfficialRootUrl;
}

bool is_mirror_root(const std::string& root) { return root != kOfficialRootUrl; }

std::string default_cache_dir() {
    std::string torch_home = env_value("TORCH_HOME");
    if (torch_home.empty()) {
        const std::string xdg = env_value("XDG_CACHE_HOME");
        torch_home = (xdg.empty() ? std::string("~/.cache") : xdg) + "/torch";
    }
    return expand_home(torch_home) + "/hub/checkpoints";
}

RemoteOptions resolve_options(const RemoteOptions& options) {
    RemoteOptions resolved = options;
    resolved.root_url = resolve_root_url(options.root_url);
    resolved.cache_dir = options.cache_dir.empty() ? default_cache_dir() : expand_home(options.cache_dir);
    return resolved;
}

void report_warning(const RemoteOptions& options, const std::string& message) {
    if (options.warning)
        options.warning(message);
    else
        std::cerr << "warning: " << message << std::endl;
}

}  // namespace fastdemucs
