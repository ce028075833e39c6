// A consumer of fathom: includes the umbrella header, uses errors, bf16, the RNG and a tensor, and
// exits 0 only if each behaves as documented.
#include <fathom/fathom.hpp>

#include <cmath>
#include <iostream>
#include <string>

#if defined(FATHOM_HAS_CBLAS)
#include <cblas.h>
#endif

int main() {
  // FATHOM_CHECK throws fathom::Error with what was expected and what came.
  try {
    const int rows = 3;
    FATHOM_CHECK(rows == 4, "expected 4 rows, got " << rows);
    std::cerr << "FATHOM_CHECK did not throw\n";
    return 1;
  } catch (const fathom::Error& e) {
    if (std::string(e.what()).find("expected 4 rows, got 3") == std::string::npos) {
      std::cerr << "unexpected message: " << e.what() << "\n";
      return 1;
    }
  }

  // bf16 rounds 1 + 2^-8 (a tie) to even, i.e. to 1.
  if (static_cast<float>(fathom::bf16(1.00390625f)) != 1.0f) {
    std::cerr << "bf16 rounding is not round-to-nearest-even\n";
    return 1;
  }

  // A tensor from the counter-based RNG, transposed as a view.
  auto x = fathom::Tensor<float>::randn(fathom::Shape{2, 3}, 42);
  auto xt = x.transpose(0, 1);
  if (xt.size(0) != 3 || !xt.shares_storage_with(x) || x.at({1, 2}) != xt.at({2, 1})) {
    std::cerr << "transpose is not a view\n";
    return 1;
  }

#if defined(FATHOM_HAS_CBLAS)
  // fathom::fathom carried the CBLAS include path and library to this program.
  const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
  float c[4] = {0, 0, 0, 0};
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
  if (c[0] != 19.0f || c[3] != 50.0f) {
    std::cerr << "cblas_sgemm through fathom::fathom gave a wrong product\n";
    return 1;
  }
  std::cout << "fathom downstream: ok (with CBLAS)\n";
#else
  std::cout << "fathom downstream: ok (portable GEMM)\n";
#endif
  return 0;
}
