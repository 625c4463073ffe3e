#include "core/pem.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <climits>

namespace bb {

namespace {

// The certificates in `pem`; -1 when a block cannot be read (then the loader takes none of it).
int pem_certificate_count(std::string_view pem) {
    if (pem.size() > static_cast<std::size_t>(INT_MAX)) {
        return -1;
    }
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    if (bio == nullptr) {
        return -1;
    }
    STACK_OF(X509_INFO)* infos = PEM_X509_INFO_read_bio(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    if (infos == nullptr) {
        ERR_clear_error();
        return -1;
    }
    int n = 0;
    for (int i = 0; i < sk_X509_INFO_num(infos); ++i) {
        if (sk_X509_INFO_value(infos, i)->x509 != nullptr) {
            ++n;
        }
    }
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    return n;
}

}  // namespace

std::string ca_bundle_problem(std::string_view pem) {
    const int n = pem_certificate_count(pem);
    if (n < 0) {
        return "cannot be read as PEM (a block is cut off or damaged): nothing in it would be trusted";
    }
    return n == 0 ? "holds no PEM certificate" : "";
}

}  // namespace bb
