#pragma once
// OpenSSL's reason for the last failure, for error messages that name it.

#include <openssl/err.h>

#include <string>

namespace bb::proxy {

// The first queued OpenSSL error (the root cause; later ones say where it surfaced), and
// the queue cleared so the next failure starts fresh.
inline std::string openssl_reason() {
    const unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0) {
        return "unknown OpenSSL error";
    }
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

// A pem_password_cb that refuses: without one OpenSSL prompts on the terminal for an
// encrypted key, which hangs a daemon (the control thread, on SIGHUP); refused, it is a
// load error instead.
inline int no_password_prompt(char*, int, int, void*) {
    return -1;
}

}  // namespace bb::proxy
