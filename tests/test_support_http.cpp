#include "test_support_http.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>

namespace testing_support {

const char kHttpServerScript[] = R"PY(
import http.server, os, sys
root, log_path = os.path.realpath(sys.argv[1]), sys.argv[2]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(log_path, 'a') as log:
            log.write(self.path + '\n')
        path, mode = self.path.split('?')[0], ''
        for prefix in ('/cut/', '/corrupt/', '/redirect/'):
            if path.startswith(prefix):
                mode, path = prefix.strip('/'), path[len(prefix) - 1:]
        if mode == 'redirect':
            self.send_response(302)
            self.send_header('Location', path)
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        local = os.path.realpath(os.path.join(root, path.lstrip('/')))
        if not local.startswith(root + os.sep) or not os.path.isfile(local):
            self.send_error(404)
            return
        with open(local, 'rb') as f:
            data = f.read()
        model = local.endswith('.th')
        if model and mode == 'corrupt':
            data = bytes([data[0] ^ 0xff]) + data[1:]
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2] if model and mode == 'cut' else data)
        self.close_connection = True

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
)PY";

namespace {

// The first stdout line, waiting at most 15 s.
int read_port(int fd) {
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (line.find('\n') == std::string::npos) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{fd, POLLIN, 0};
        if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return -1;
        char buffer[64];
        const ssize_t got = ::read(fd, buffer, sizeof buffer);
        if (got <= 0) return -1;
        line.append(buffer, static_cast<size_t>(got));
    }
    return std::atoi(line.c_str());
}

}  // namespace

MirrorServer::MirrorServer(const std::filesystem::path& script, const std::filesystem::path& root,
                           const std::filesystem::path& log) {
    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ == 0) {
        ::dup2(out[1], STDOUT_FILENO);
        ::close(out[0]);
        ::close(out[1]);
        ::execlp("python3", "python3", script.c_str(), root.c_str(), log.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::close(out[1]);
    port_ = read_port(out[0]);
    ::close(out[0]);
    if (port_ <= 0) {
        stop();
        throw std::runtime_error("the test HTTP server did not start");
    }
}

MirrorServer::~MirrorServer() { stop(); }

std::string MirrorServer::url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/"; }

void MirrorServer::stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
}

}  // namespace testing_support
