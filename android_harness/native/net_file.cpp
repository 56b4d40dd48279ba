/* See net_file.h. The checks mirror profiler/netgraph.py and profiler/netfile.py (the writer's side of
 * the same contract), so a file the kit writes is one the engine reads and vice versa. */
#include "net_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmath>
#include <set>

extern "C" {
#include "json.h"
}

namespace {

const unsigned char kMagic[8] = {'J', 'C', 'W', 'N', 'E', 'T', 0, 0};
const uint32_t kVersion = 1;
const size_t kPreamble = 16, kAlign = 64, kMaxHeader = 16u << 20, kMaxNodes = 4096;
const int64_t kMaxDim = int64_t(1) << 24;

struct owned_document {
  json_value root{};
  ~owned_document() { json_free_document(&root); }
};

uint32_t le32(const unsigned char* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t) p[3] << 24); }

std::string show_shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool as_int(const json_value* v, int64_t lo, int64_t hi, int64_t* out) {
  if (v == nullptr || v->kind != JSON_NUMBER || v->num != std::floor(v->num) || v->num < (double) lo || v->num > (double) hi)
    return false;
  *out = (int64_t) v->num;
  return true;
}

bool as_shape(const json_value* v, std::vector<int64_t>* out) {
  if (v == nullptr || v->kind != JSON_ARRAY || v->count == 0 || v->count > 8) return false;
  out->clear();
  for (size_t i = 0; i < v->count; i++) {
    int64_t d;
    if (!as_int(&v->items[i], 1, kMaxDim, &d)) return false;
    out->push_back(d);
  }
  return true;
}

const char* as_name(const json_value* v) { return v != nullptr && v->kind == JSON_STRING && v->str[0] ? v->str : nullptr; }

/* The fields each operator must carry (NETFILE.md, "Nodes"). */
const std::map<std::string, std::vector<const char*>> kNodeFields = {
    {"conv2d", {"name", "input", "output", "cin", "cout", "k", "stride", "pad", "groups", "weight", "bias", "activation", "sparse"}},
    {"add", {"name", "inputs", "output", "activation"}},
    {"max_pool2d", {"name", "input", "output", "k", "stride", "pad"}},
    {"global_avg_pool", {"name", "input", "output"}},
    {"linear", {"name", "input", "output", "cin", "cout", "weight", "bias"}},
};

/* Checks one file; every failure sets err to "<path> <one clause>." and returns false. */
class net_reader {
 public:
  net_reader(net_file* net, std::string* err) : net_(net), err_(err) {}

  bool fail(const std::string& clause) {
    *err_ = net_->path + " " + clause;
    if (err_->size() > 300) err_->resize(300);
    return false;
  }

  bool header(const json_value& h, size_t* payload_bytes, uint32_t* crc) {
    if (h.kind != JSON_OBJECT) return fail("has a header that is not a JSON object (damaged)");
    for (const char* field : {"format", "version", "name", "input", "output", "payload_bytes", "payload_crc32", "tensors", "nodes", "check"})
      if (json_member(&h, field) == nullptr) return fail(std::string("has a header without the field '") + field + "'");
    const json_value* format = json_member(&h, "format");
    int64_t version;
    if (format->kind != JSON_STRING || strcmp(format->str, "jcw-net") != 0 || !as_int(json_member(&h, "version"), 1, 1, &version))
      return fail("has a header that is not format 'jcw-net' version 1; this engine reads 'jcw-net' version 1");
    int64_t bytes, sum;
    if (!as_int(json_member(&h, "payload_bytes"), 0, INT64_C(1) << 50, &bytes))
      return fail("has a header field 'payload_bytes' that is not a non-negative integer");
    if (!as_int(json_member(&h, "payload_crc32"), 0, INT64_C(0xffffffff), &sum))
      return fail("has a header field 'payload_crc32' that is not a non-negative integer");
    const json_value* name = json_member(&h, "name");
    net_->name = name->kind == JSON_STRING ? name->str : "";
    *payload_bytes = (size_t) bytes;
    *crc = (uint32_t) sum;
    return true;
  }

  bool tensors(const json_value* table, const unsigned char* payload, size_t payload_bytes) {
    if (table->kind != JSON_OBJECT) return fail("has a 'tensors' field that is not a JSON object");
    for (size_t i = 0; i < table->count; i++) {
      const json_value& entry = table->items[i];
      const char* key = table->keys[i];
      net_tensor t;
      int64_t offset;
      if (!as_int(json_member(&entry, "offset"), 0, INT64_C(1) << 50, &offset) || offset % (int64_t) kAlign ||
          !as_shape(json_member(&entry, "shape"), &t.shape))
        return fail(std::string("has a tensor '") + key + "' whose offset is not a multiple of 64 or whose shape is not a list of integers >= 1");
      double count = 1;
      for (int64_t d : t.shape) count *= (double) d;
      if ((double) offset + 4.0 * count > (double) payload_bytes)
        return fail(std::string("has a tensor '") + key + "' of shape " + show_shape(t.shape) + " at offset " +
                    std::to_string(offset) + " that does not fit in its " + std::to_string(payload_bytes) + "-byte payload");
      t.count = (size_t) count;
      t.data = reinterpret_cast<const float*>(payload + offset);
      for (size_t j = 0; j < t.count; j++)
        if (!std::isfinite(t.data[j])) return fail(std::string("has a tensor '") + key + "' with a value that is not finite");
      net_->tensors[key] = t;
    }
    return true;
  }

  bool graph(const json_value& h) {
    const json_value* input = json_member(&h, "input");
    const char* input_name = as_name(json_member(input, "name"));
    std::vector<int64_t> input_shape;
    if (input_name == nullptr || !as_shape(json_member(input, "shape"), &input_shape))
      return fail("has an 'input' field that is not an object with a name and a shape");
    if (input_shape.size() != 4 || input_shape[0] != 1)
      return fail("has an input of shape " + show_shape(input_shape) + "; the engine takes [1, C, H, W]");
    if ((double) input_shape[1] * (double) input_shape[2] * (double) input_shape[3] > 2147483647.0)
      return fail("has an input of shape " + show_shape(input_shape) + ", more than 2^31 elements");
    net_->input_name = input_name;
    net_->shapes[input_name] = input_shape;
    const json_value* nodes = json_member(&h, "nodes");
    if (nodes->kind != JSON_ARRAY || nodes->count == 0) return fail("has no nodes");
    if (nodes->count > kMaxNodes) return fail("has " + std::to_string(nodes->count) + " nodes, more than the limit of 4096");
    std::set<std::string> names;
    for (size_t i = 0; i < nodes->count; i++) {
      net_node node;
      if (!this->node(nodes->items[i], i, &node)) return false;
      if (!names.insert(node.name).second) return fail("has two nodes named '" + node.name + "'");
      net_->nodes.push_back(node);
    }
    const char* output = as_name(json_member(&h, "output"));
    if (output == nullptr || !net_->shapes.count(output) || net_->input_name == output)
      return fail("has an output that no node produces");
    net_->output = output;
    return true;
  }

  bool check_pair(const json_value& h) {
    const json_value* check = json_member(&h, "check");
    const char* in = as_name(json_member(check, "input"));
    const char* out = as_name(json_member(check, "output"));
    if (in == nullptr || out == nullptr) return fail("has a 'check' field that does not name an input and an output tensor");
    const json_value* tolerance = json_member(check, "tolerance");
    if (tolerance == nullptr || tolerance->kind != JSON_NUMBER || !std::isfinite(tolerance->num) || tolerance->num <= 0)
      return fail("has a check tolerance that is not a number > 0");
    net_->tolerance = tolerance->num;
    const char* roles[2] = {"input", "output"};
    const char* keys[2] = {in, out};
    const std::vector<int64_t>* wanted[2] = {&net_->shapes[net_->input_name], &net_->shapes[net_->output]};
    for (int r = 0; r < 2; r++) {
      auto it = net_->tensors.find(keys[r]);
      if (it == net_->tensors.end())
        return fail(std::string("names a check ") + roles[r] + " tensor '" + keys[r] + "' that is not in its tensor table");
      if (it->second.shape != *wanted[r])
        return fail(std::string("has a check ") + roles[r] + " of shape " + show_shape(it->second.shape) + ", but the network's " +
                    roles[r] + " has shape " + show_shape(*wanted[r]));
      (r == 0 ? net_->check_input : net_->check_output) = &it->second;
    }
    return true;
  }

 private:
  bool node(const json_value& v, size_t index, net_node* n) {
    const char* name = as_name(json_member(&v, "name"));
    if (v.kind != JSON_OBJECT) return fail("has a node " + std::to_string(index) + " that is not a JSON object");
    if (name == nullptr) return fail("has a node " + std::to_string(index) + " whose name is not a non-empty string");
    n->name = name;
    const json_value* op = json_member(&v, "op");
    const std::string op_name = op != nullptr && op->kind == JSON_STRING ? op->str : "";
    auto fields = kNodeFields.find(op_name);
    if (fields == kNodeFields.end())
      return fail("has a layer the engine cannot run: " + n->name + " (op '" + op_name.substr(0, 60) + "')");
    for (const char* field : fields->second)
      if (json_member(&v, field) == nullptr) return fail("has a node '" + n->name + "' (" + op_name + ") without the field '" + field + "'");
    n->op = op_name == "conv2d" ? net_op::conv2d : op_name == "add" ? net_op::add : op_name == "max_pool2d" ? net_op::max_pool2d
          : op_name == "global_avg_pool" ? net_op::global_avg_pool : net_op::linear;
    const char* output = as_name(json_member(&v, "output"));
    if (output == nullptr) return fail("has a node '" + n->name + "' whose output is not a non-empty string");
    if (net_->shapes.count(output)) return fail("has a node '" + n->name + "' whose output '" + output + "' is already defined (values are SSA)");
    n->output = output;
    if (n->op == net_op::add) {
      const json_value* inputs = json_member(&v, "inputs");
      if (inputs->kind != JSON_ARRAY || inputs->count != 2) return fail("has an add '" + n->name + "' whose 'inputs' is not a list of two value names");
      for (size_t i = 0; i < 2; i++) n->inputs.push_back(as_name(&inputs->items[i]) ? inputs->items[i].str : "");
    } else {
      n->inputs.push_back(as_name(json_member(&v, "input")) ? json_member(&v, "input")->str : "");
    }
    for (const std::string& source : n->inputs)
      if (!net_->shapes.count(source)) return fail("has a node '" + n->name + "' that reads '" + source.substr(0, 60) + "', which no earlier node produces");
    const json_value* activation = json_member(&v, "activation");
    if (activation != nullptr) {
      const char* a = activation->kind == JSON_STRING ? activation->str : "";
      if (strcmp(a, "none") && strcmp(a, "relu") && strcmp(a, "relu6"))
        return fail("has a node '" + n->name + "' whose activation is not none, relu or relu6");
      n->activation = !strcmp(a, "relu") ? net_activation::relu : !strcmp(a, "relu6") ? net_activation::relu6 : net_activation::none;
    }
    std::vector<int64_t> out;
    if (!shape_of(v, n, &out)) return false;
    double count = 1;
    for (int64_t d : out) count *= (double) d;
    if (count > 2147483647.0) return fail("has a node '" + n->name + "' whose output " + show_shape(out) + " has more than 2^31 elements");
    net_->shapes[n->output] = out;
    return true;
  }

  bool integer(const json_value& v, const net_node& n, const char* field, int64_t lo, int64_t* out) {
    if (as_int(json_member(&v, field), lo, kMaxDim, out)) return true;
    return fail("has a node '" + n.name + "' whose '" + field + "' must be an integer in [" + std::to_string(lo) + ", 16777216]");
  }

  bool tensor(const json_value& v, const net_node& n, const char* field, const std::vector<int64_t>& wanted, const net_tensor** out) {
    const json_value* key = json_member(&v, field);
    if (key->kind == JSON_NULL && !strcmp(field, "bias")) return true;
    auto it = key->kind == JSON_STRING ? net_->tensors.find(key->str) : net_->tensors.end();
    if (it == net_->tensors.end()) return fail("has a node '" + n.name + "' whose " + field + " is not in its tensor table");
    if (it->second.shape != wanted)
      return fail("has a node '" + n.name + "' whose " + field + " has shape " + show_shape(it->second.shape) + ", expected " + show_shape(wanted));
    *out = &it->second;
    return true;
  }

  bool window(const net_node& n, int64_t size, int64_t* out) {
    if (n.k > size + 2 * n.pad)
      return fail("has a node '" + n.name + "' whose " + std::to_string(n.k) + "x" + std::to_string(n.k) +
                  " window exceeds its padded input of " + std::to_string(size + 2 * n.pad));
    *out = (size + 2 * n.pad - n.k) / n.stride + 1;
    return true;
  }

  bool shape_of(const json_value& v, net_node* n, std::vector<int64_t>* out) {
    const std::vector<int64_t>& in = net_->shapes[n->inputs[0]];
    int64_t oh, ow;
    switch (n->op) {
      case net_op::add:
        if (in != net_->shapes[n->inputs[1]])
          return fail("has an add '" + n->name + "' whose operands differ in shape, " + show_shape(in) + " vs " + show_shape(net_->shapes[n->inputs[1]]));
        *out = in;
        return true;
      case net_op::linear:
        if (!integer(v, *n, "cin", 1, &n->cin) || !integer(v, *n, "cout", 1, &n->cout)) return false;
        if (in != std::vector<int64_t>{1, n->cin} && in != std::vector<int64_t>{1, n->cin, 1, 1})
          return fail("has a linear layer '" + n->name + "' with cin " + std::to_string(n->cin) + " but an input of shape " + show_shape(in));
        if (!tensor(v, *n, "weight", {n->cout, n->cin}, &n->weight) || !tensor(v, *n, "bias", {n->cout}, &n->bias)) return false;
        *out = {1, n->cout};
        return true;
      default: break;
    }
    if (in.size() != 4) return fail("has a node '" + n->name + "' whose input of shape " + show_shape(in) + " is not NCHW");
    if (n->op == net_op::global_avg_pool) {
      *out = {1, in[1], 1, 1};
      return true;
    }
    if (!integer(v, *n, "k", 1, &n->k) || !integer(v, *n, "stride", 1, &n->stride) || !integer(v, *n, "pad", 0, &n->pad)) return false;
    if (n->op == net_op::max_pool2d) {
      if (n->pad > n->k / 2) return fail("has a max pool '" + n->name + "' whose padding exceeds half its window");
      if (!window(*n, in[2], &oh) || !window(*n, in[3], &ow)) return false;
      *out = {1, in[1], oh, ow};
      return true;
    }
    if (!integer(v, *n, "cin", 1, &n->cin) || !integer(v, *n, "cout", 1, &n->cout) || !integer(v, *n, "groups", 1, &n->groups)) return false;
    if (in[1] != n->cin) return fail("has a convolution '" + n->name + "' with cin " + std::to_string(n->cin) + " but an input of shape " + show_shape(in));
    if (n->groups != 1 && !(n->groups == n->cin && n->cin == n->cout))
      return fail("has a convolution '" + n->name + "' with groups " + std::to_string(n->groups) + "; only 1 or depthwise (groups = cin = cout) is supported");
    const json_value* sparse = json_member(&v, "sparse");
    if (sparse->kind != JSON_BOOL) return fail("has a convolution '" + n->name + "' whose 'sparse' is not true or false");
    n->sparse = sparse->num != 0;
    if (n->sparse && n->groups != 1) return fail("has a sparse depthwise convolution '" + n->name + "'; only groups == 1 convolutions run sparse");
    if (!tensor(v, *n, "weight", {n->cout, n->cin / n->groups, n->k, n->k}, &n->weight) || !tensor(v, *n, "bias", {n->cout}, &n->bias))
      return false;
    if (n->sparse) {
      size_t nonzeros = 0;
      for (size_t i = 0; i < n->weight->count; i++) nonzeros += n->weight->data[i] != 0.0f;
      if (nonzeros == 0) return fail("has a sparse layer " + n->name + " at density 0 (no non-zero weight)");
    }
    if (!window(*n, in[2], &oh) || !window(*n, in[3], &ow)) return false;
    *out = {1, n->cout, oh, ow};
    return true;
  }

  net_file* net_;
  std::string* err_;
};

}  // namespace

uint32_t net_crc32(const unsigned char* data, size_t size) {
  static uint32_t table[256];
  if (table[1] == 0)
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int b = 0; b < 8; b++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; i++) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

bool net_read(const std::string& path, double max_bytes, net_file* net, std::string* err) {
  *net = net_file();
  net->path = path;
  net_reader reader(net, err);
  FILE* f = fopen(path.c_str(), "rb");
  struct stat st;
  if (f == nullptr || fstat(fileno(f), &st) != 0) {
    *err = "cannot read network file " + path + ": " + strerror(errno);
    if (f != nullptr) fclose(f);
    return false;
  }
  const size_t size = (size_t) st.st_size;
  if ((double) size > max_bytes) {
    fclose(f);
    return reader.fail("is " + std::to_string(size >> 20) + " MB, more than --max-mb allows");
  }
  void* raw = nullptr;
  if (posix_memalign(&raw, kAlign, size + kAlign) != 0) {
    fclose(f);
    return reader.fail("does not fit in memory");
  }
  net->storage.reset(static_cast<unsigned char*>(raw), free);
  unsigned char* bytes = net->storage.get();
  const size_t got = fread(bytes, 1, size, f);
  fclose(f);
  if (got != size) return reader.fail("could not be read completely");
  bytes[size] = '\0';
  net->file_bytes = size;

  if (size < kPreamble || memcmp(bytes, kMagic, sizeof kMagic) != 0) return reader.fail("is not a jcw network file");
  const uint32_t version = le32(bytes + 8), header_bytes = le32(bytes + 12);
  if (version != kVersion)
    return reader.fail("is a jcw network file of version " + std::to_string(version) + "; this engine reads version 1");
  if (header_bytes < 1 || header_bytes > kMaxHeader)
    return reader.fail("declares a header of " + std::to_string(header_bytes) + " bytes, outside 1 byte to 16 MiB (damaged)");
  if (kPreamble + header_bytes > size)
    return reader.fail("is truncated: its header ends at byte " + std::to_string(kPreamble + header_bytes) + " but the file has " +
                       std::to_string(size));
  std::string text(reinterpret_cast<const char*>(bytes + kPreamble), header_bytes);
  if (strlen(text.c_str()) != text.size()) return reader.fail("has a header that is not JSON (damaged)");
  owned_document doc;
  char why[256];
  if (json_parse_document(text.c_str(), &doc.root, why, sizeof why) != 0) return reader.fail("has a header that is not JSON (damaged)");
  size_t payload_bytes = 0;
  uint32_t crc = 0;
  if (!reader.header(doc.root, &payload_bytes, &crc)) return false;
  const size_t payload_start = (kPreamble + header_bytes + kAlign - 1) / kAlign * kAlign;
  const double expected = (double) payload_start + (double) payload_bytes;
  if ((double) size != expected)
    return reader.fail(std::string("is ") + ((double) size < expected ? "truncated" : "extended") + ": its header says " +
                       std::to_string((long long) expected) + " bytes but the file has " + std::to_string(size));
  for (size_t i = kPreamble + header_bytes; i < payload_start; i++)
    if (bytes[i] != 0) return reader.fail("is damaged: the bytes between its header and payload are not zero");
  if (net_crc32(bytes + payload_start, payload_bytes) != crc) return reader.fail("is damaged: its payload does not match its CRC-32");
  return reader.tensors(json_member(&doc.root, "tensors"), bytes + payload_start, payload_bytes) && reader.graph(doc.root) &&
         reader.check_pair(doc.root);
}
