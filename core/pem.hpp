#pragma once
// What a PEM CA bundle holds, read as OpenSSL's file loader reads one (PEM_X509_INFO_read_bio:
// `CERTIFICATE` and `TRUSTED CERTIFICATE` blocks, CRLs; other blocks skipped). The config
// judges a ca_file with it when it is read, so a bundle cut off mid-certificate (a renewal
// caught half-written) is refused with its JSON path, not found at the first connection.

#include <string_view>

namespace bb {

// The certificates in `pem`; -1 when a block cannot be read (then the loader takes none of it).
int pem_certificate_count(std::string_view pem);

}  // namespace bb
