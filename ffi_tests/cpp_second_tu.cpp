// A second translation unit including the wrapper: it must link without
// duplicate symbols (everything in the header is inline).
#include "layerskip.hpp"

std::string second_tu_decode(const layerskip::Model& model, const std::vector<int32_t>& ids) {
    return model.detokenize(ids);
}
