#pragma once
// What a PEM CA bundle holds, read as OpenSSL's file loader reads one (PEM_X509_INFO_read_bio:
// `CERTIFICATE` and `TRUSTED CERTIFICATE` blocks, CRLs; other blocks skipped). The config
// judges a ca_file with it when it is read, so a bundle cut off mid-certificate (a renewal
// caught half-written) is refused with its JSON path, not found at the first connection.

#include <string>
#include <string_view>

namespace bb {

// What makes `pem` unusable as a CA bundle, said after its file's name ("cannot be read as
// PEM ...", "holds no PEM certificate"), or "" when it holds a certificate and reads whole.
std::string ca_bundle_problem(std::string_view pem);

}  // namespace bb
