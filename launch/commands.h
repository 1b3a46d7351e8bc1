// The zsq sub-commands. Each takes argv after the command name and returns the
// process exit code; errors are thrown (UsageError and zsq::OptionError -> 2, others -> 1) and
// reported by main().
#pragma once

namespace zsq::cli {

int train_teacher(int argc, char** argv);
int eval(int argc, char** argv);
int inspect(int argc, char** argv);
int init_student(int argc, char** argv);
int extract(int argc, char** argv);
int generate(int argc, char** argv);
int quantize(int argc, char** argv);
int ptq(int argc, char** argv);

} // namespace zsq::cli
