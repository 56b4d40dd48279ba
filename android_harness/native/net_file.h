/* Reading a jcw network file (NETFILE.md, version 1): bytes, CRC-32, JSON header, tensor table and
 * operator graph, every refusal one sentence naming the file. Loading never executes anything from it. */
#ifndef PTEBENCH_NET_FILE_H
#define PTEBENCH_NET_FILE_H

#include <stddef.h>
#include <stdint.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

/* A float32 tensor of the payload, used in place (64-byte aligned inside the file's buffer). */
struct net_tensor {
  std::vector<int64_t> shape;
  const float* data = nullptr;
  size_t count = 0;
};

enum class net_op { conv2d, add, max_pool2d, global_avg_pool, linear };
enum class net_activation { none, relu, relu6 };

struct net_node {
  net_op op = net_op::conv2d;
  std::string name, output;
  std::vector<std::string> inputs;  /* one value, two for add */
  int64_t cin = 0, cout = 0, k = 1, stride = 1, pad = 0, groups = 1;
  const net_tensor* weight = nullptr;
  const net_tensor* bias = nullptr;  /* nullptr: no bias */
  net_activation activation = net_activation::none;
  bool sparse = false;
};

struct net_file {
  std::string path, name, input_name, output;
  std::vector<net_node> nodes;
  std::map<std::string, net_tensor> tensors;
  std::map<std::string, std::vector<int64_t>> shapes;  /* every value's NCHW shape (or [1, C] after linear) */
  const net_tensor* check_input = nullptr;
  const net_tensor* check_output = nullptr;
  double tolerance = 0;
  size_t file_bytes = 0;
  std::shared_ptr<unsigned char> storage;  /* the whole file; tensors point into it */
};

/* Reads and checks `path`; a file larger than max_bytes is refused before it is read. Returns false
 * with one sentence in err on any refusal NETFILE.md lists. */
bool net_read(const std::string& path, double max_bytes, net_file* net, std::string* err);

/* zlib's CRC-32 (ISO-HDLC), as the payload_crc32 field. */
uint32_t net_crc32(const unsigned char* data, size_t size);

#endif
