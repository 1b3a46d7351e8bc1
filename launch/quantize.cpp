// zsq quantize: the main job, data-free once-for-all quantization (checkpoints, resume, metrics).
#include "launch/commands.h"
#include "launch/options.h"
#include "launch/quantize_options.h"

#include "distributed/communicator.h"
#include "framework/data.h"
#include "framework/errors.h"
#include "framework/h5.h"
#include "framework/model_file.h"
#include "generators/synthesizer.h"
#include "models/extract.h"
#include "models/quant_factory.h"
#include "models/zoo.h"
#include "trainers/evaluate.h"
#include "trainers/quantize.h"
#include "trainers/run.h"

#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <set>

namespace zsq::cli {
namespace fs = std::filesystem;

namespace {

// quantize's options in the groups --help prints: teacher and data, student, training, generator, run, common.
void add_quantize_options(po::options_description& desc) {
  po::options_description data("Teacher and data"), student("Student"), training("Training"),
      generator("Generator (online synthesis, without --pool)"), run("Run folder, checkpoints, progress"),
      common("Common");
  data.add_options()
      ("teacher", po::value<std::string>(), "FP32 teacher model file")
      ("pool", po::value<std::string>(),
       "train on this fixed set of images instead of generating online: an HDF5 data set (e.g. from zsq generate), "
       "an image folder (one sub-folder of PNG/JPEG files per class), or 'fashion-mnist' for the real-data baseline")
      ("recipe", po::value<std::string>()->default_value("gdfq"),
       "online generation (without --pool): gdfq or qimera alternate a generator with the student; "
       "noise, zeroq, dsg, genie, intraq make fresh batches")
      ("eval-data", po::value<std::string>()->default_value("fashion-mnist"),
       "labelled test set for the final table ('fashion-mnist', an HDF5 file, an image folder, or 'none')")
      ("data-dir", po::value<std::string>()->default_value(kFashionMnistDir), "folder with the Fashion-MNIST IDX files");
  add_model_overrides(data);
  add_student_options(student);
  add_quant_init_options(student);
  add_training_options(training);
  add_bn_options(training, "auto", "auto");
  add_synth_options(generator, "gen-");
  generator.add_options()
      ("gen-clamp-pixels", po::value<std::string>()->default_value("off"),
       "on: the generator's losses see its images clamped to the pixel range [0, 1], as the teacher and the student "
       "see them (needs --clamp-pixels on); off: the images as generated (GDFQ)")
      ("lowpass", po::value<double>()->default_value(0),
       "SynQ's low-pass filter: the training and calibration images' spectra times exp(-D^2/(2*D0^2)), D the "
       "frequency in cycles per image, before the clamp (e.g. 7 at 28x28; 0: off)");
  run.add_options()
      ("out", po::value<std::string>()->default_value("run"),
       "run folder (created): checkpoint.h5, metrics.jsonl, result.json")
      ("checkpoint-every", po::value<int64_t>()->default_value(100), "steps between checkpoints (0: only at the end)")
      ("stop-after", po::value<int64_t>()->default_value(0),
       "end after this many steps with a checkpoint (0: run to the end); --resume continues")
      ("resume", po::bool_switch(), "continue the run in --out from its checkpoint")
      ("log-every", po::value<int64_t>()->default_value(50), "steps between progress lines")
      ("collective-timeout", po::value<double>()->default_value(600), "under mpirun: seconds a collective may take")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed");
  add_common_options(common);
  desc.add(data).add(student).add(training).add(generator).add(run).add(common);
}

// Online generation's options; the recipe decides whether a generator warms up and weighs its BN loss.
generators::SynthesizerOptions read_online_options(const po::variables_map& vm, trainers::QuantizeOptions* q) {
  generators::SynthesizerOptions so;
  so.recipe = get<std::string>(vm, "recipe");
  read_synth_options(vm, "gen-", &so);
  so.seed = q->seed;
  so.external_adversary = true;  // online, --gen-adversarial works against the student being quantized
  try {
    const generators::Recipe recipe = generators::resolve_recipe(so);
    if (recipe.variables != "generator") q->generator_warmup = 0;  // only a trained generator warms up
    // A generator trained beside the student weighs the BN-statistics loss 1 unless told (GDFQ: 0.1;
    // measured on ResNet-20, 2-bit: 79.8 vs 74.7 %, and on the demo teacher with the rest of the recipe).
    if (recipe.variables == "generator" && so.bns_weight < 0) so.bns_weight = 1;
  } catch (const c10::Error& e) {
    throw UsageError(e.what_without_backtrace());
  }
  return so;
}

// What a resumed run takes from its checkpoint.
struct Resumed {
  int64_t step = 0, world = 0;
  bool calibrated_input = false;  // from before --input-range: the input step was calibrated
};

Resumed check_resume(const std::string& checkpoint, const std::string& recipe_text, const po::variables_map& vm,
                     trainers::QuantizeOptions* q) {
  const h5::File file = h5::File::open_read(checkpoint);
  const trainers::CheckpointInfo info = trainers::read_checkpoint_info(file);  // also: it is a checkpoint at all
  const std::string stored = read_meta_attrs(file).recipe;
  static const std::set<std::string> free = {"out", "resume", "log-every", "eval-data", "data-dir", "threads",
                                             "log-level", "json", "config", "collective-timeout",
                                             "checkpoint-every", "stop-after"};
  check_same_recipe(checkpoint, stored, recipe_text, vm, free);
  // A checkpoint from before these options trained with a calibrated input step on unclamped images.
  const auto values = config_values(stored);
  if (!values.count("clamp-pixels")) q->clamp_pixels = false;
  return {info.step, info.world_size, !values.count("input-range")};
}

// The images the student trains on: a pool, or a synthesizer with its own copy of the teacher.
struct Source {
  std::optional<Dataset> pool;
  std::unique_ptr<generators::Synthesizer> synth;
};

Source load_source(const po::variables_map& vm, generators::SynthesizerOptions so, bool gen_clamp,
                   const trainers::QuantizeOptions& q,
                   const trainers::LoadedModel& teacher, const models::ModelSpec& spec,
                   const std::shared_ptr<distributed::Communicator>& comm) {
  Source s;
  if (vm.count("pool")) {
    const std::string spec_text = get<std::string>(vm, "pool");
    s.pool = load_dataset(spec_text, spec_text == "fashion-mnist" ? get<std::string>(vm, "data-dir") : "", Split::kTrain,
                          teacher.meta.input_shape);
    trainers::check_data_fits(teacher.meta, *s.pool);
    return s;
  }
  if (q.batch_size % comm->size() != 0) {
    throw UsageError("--batch-size " + std::to_string(q.batch_size) + " must be a multiple of the number of processes (" +
                     std::to_string(comm->size()) + ")");
  }
  so.batch_size = q.batch_size / comm->size();
  so.teacher_spec = spec;
  if (gen_clamp) so.loss_clamp = PixelClamp(teacher.norm());
  // The synthesizer gets its own copy of the teacher: its BN taps must not disturb the distillation.
  models::Classifier copy = models::build(spec, models::Fp32Factory());
  load_state(h5::File::open_read(get<std::string>(vm, "teacher")), *copy);
  s.synth = generators::make_synthesizer(copy, teacher.meta.input_shape, teacher.meta.num_classes, so, comm);
  return s;
}

void print_plan(const models::ModelSpec& spec, const models::StudentConfig& config, const Source& source,
                const trainers::QuantizeOptions& q, int processes, bool gen_clamp) {
  std::cout << "quantize: " << spec.arch << " at bits " << models::bits_text(config.bits) << " on "
            << (source.synth ? "images generated online (" + source.synth->recipe().describe() +
                                   (gen_clamp ? ", its losses on clamped images" : "") + ")"
                             : source.pool->name + " (" + std::to_string(source.pool->size()) + " images)")
            << ", " << q.steps << " steps, batch " << q.batch_size << ", lr " << q.lr << ", T " << q.temperature
            << ", weighting " << trainers::weighting_name(q.weighting) << (q.recursive ? " (recursive)" : "")
            << (q.mix_samples > 0 ? ", " + std::to_string(q.mix_samples) + " random mix(es) per step" : "")
            << (q.train == trainers::TrainScope::kPerBit ? ", shared weights frozen (per-bit training)" : "")
            << (q.bn_bits.empty() ? ""
                                  : ", BatchNorm re-estimated (" + trainers::bn_modes_text(q.bn_modes, q.bn_bits) +
                                        ") at bits " + models::bits_text(q.bn_bits) +
                                        (q.bn_reestimate_end ? " at the start and the end" : "") +
                                        (q.bn_track > 0 ? ", tracked while training (--bn-track " +
                                                              (std::ostringstream() << q.bn_track).str() + ")"
                                                        : ""))
            << (q.bn_train.empty() ? "" : ", BatchNorm on batch statistics at bits " + models::bits_text(q.bn_train))
            << ce_text(q.ce_weight, config.bits)
            << (q.lowpass > 0 ? ", images low-pass filtered (D0 " + (std::ostringstream() << q.lowpass).str() + ")" : "")
            << (processes > 1 ? ", " + std::to_string(processes) + " processes" : std::string()) << std::endl;
}

// One step's metrics line, and a progress line every `every` steps (and at the end, and at a --stop-after checkpoint).
void report_step(const trainers::QuantizeStep& r, trainers::RunFolder& run, int64_t every, bool stopping) {
  if (r.step == 0) {  // generator warm-up
    if (r.warmup_step % every == 0 || r.warmup_step == r.warmup_steps) {
      std::cout << "generator warm-up " << r.warmup_step << "/" << r.warmup_steps << "  loss " << std::fixed
                << std::setprecision(4) << r.generator_loss << std::endl;
    }
    return;
  }
  Json line;
  line.add("step", r.step).add("lr", r.lr).add("bits", r.bits).add("loss", r.losses);
  if (!r.alphas.empty()) line.add("alpha", r.alphas);
  if (!r.grad_norms.empty()) line.add("grad_norm", r.grad_norms);
  if (r.generator_loss >= 0) line.add("generator_loss", r.generator_loss);
  if (r.generator_adversarial != 0) line.add("generator_adversarial", r.generator_adversarial);
  line.add("images_per_second", r.images_per_second);
  run.log(line.str(), r.checkpointed);
  if (r.step % every != 0 && r.step != r.steps && !(r.checkpointed && stopping)) return;
  std::cout << "step " << r.step << "/" << r.steps << "  loss";
  for (size_t i = 0; i < r.losses.size(); ++i) {
    std::cout << (r.bits[i] > 0 ? " b" + std::to_string(r.bits[i]) : std::string(" mix")) << " " << std::fixed << std::setprecision(4) << r.losses[i];
  }
  if (r.generator_loss >= 0) std::cout << "  generator " << std::setprecision(4) << r.generator_loss;
  if (r.generator_adversarial != 0) std::cout << " (adversarial " << std::setprecision(4) << r.generator_adversarial << ")";
  std::cout << "  lr " << std::defaultfloat << std::setprecision(3) << r.lr << "  " << std::fixed << std::setprecision(0)
            << r.images_per_second << " img/s  elapsed " << format_duration(r.elapsed_seconds) << "  ETA "
            << format_duration(r.eta_seconds) << std::endl;
}

// The teacher's and every bit-width's top-1 on the test set, printed and added to `json`.
void evaluate_bit_widths(const Dataset& test, const trainers::LoadedModel& teacher, models::ClassifierImpl& student,
                         const std::vector<int64_t>& bits, Json* json) {
  const trainers::EvalResult t = trainers::evaluate(*teacher.model, test, teacher.norm());
  std::cout << "top-1 on " << test.name << ": teacher (fp32) " << percent(t.top1);
  json->add("teacher_top1", t.top1);
  for (const int64_t b : bits) {
    models::set_bits(student, b);
    const trainers::EvalResult r = trainers::evaluate(student, test, teacher.norm());
    std::cout << ", " << b << "-bit " << percent(r.top1);
    json->add("top1_b" + std::to_string(b), r.top1);
  }
  std::cout << std::endl;
}

void print_result(const trainers::QuantizeResult& result, const trainers::RunFolder& run,
                  const models::StudentConfig& config, int64_t steps, double seconds) {
  if (result.resumed_from >= 0) std::cout << "resumed from step " << result.resumed_from << std::endl;
  if (result.changed_codes >= 0) {
    std::cout << "top-precision (" << config.top_bits << "-bit) weight codes changed by training: " << std::fixed
              << std::setprecision(2) << 100 * result.changed_codes << " %" << std::defaultfloat << std::endl;
  }
  std::cout << "wrote " << run.checkpoint() << " (step " << result.steps_done << "/" << steps << ") and "
            << run.metrics() << " in " << format_duration(seconds) << std::endl;
  if (!result.complete) {
    std::cout << "stopped after " << result.steps_done << " of " << steps
              << " steps; continue with the same command and --resume" << std::endl;
  }
}

// The end of a run on rank 0: the summary, every bit-width's top-1 on the test set, result.json, --json.
void finish(const trainers::QuantizeResult& result, trainers::RunFolder& run, const models::StudentConfig& config,
            int64_t steps, double seconds, const Dataset* test, const trainers::LoadedModel& teacher,
            models::ClassifierImpl& student, bool print_json) {
  print_result(result, run, config, steps, seconds);
  Json json;
  json.add("command", "quantize").add("checkpoint", run.checkpoint()).add("bits", config.bits)
      .add("steps_done", result.steps_done).add("complete", result.complete).add("seconds", seconds);
  if (result.changed_codes >= 0) json.add("changed_codes", result.changed_codes);
  if (result.complete && test) evaluate_bit_widths(*test, teacher, student, config.bits, &json);
  if (result.complete) run.write_result(json.str());
  if (print_json) std::cout << json.str() << std::endl;
}

} // namespace

int quantize(int argc, char** argv) {
  po::options_description desc("zsq quantize options");
  add_quantize_options(desc);
  Common common;
  auto parsed = parse("quantize", "zsq quantize --teacher teacher.h5 [--pool synth.h5 | --recipe gdfq] [--bits 2,3,4,8] [--out run/]",
                      desc, argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("teacher")) throw UsageError("--teacher is required");
  models::StudentConfig config = read_student_config(vm);
  trainers::QuantizeOptions q = read_quantize_options(vm, config);
  const int64_t every = get<int64_t>(vm, "log-every");
  if (every < 1) throw UsageError("--log-every must be >= 1");
  const double timeout = get<double>(vm, "collective-timeout");
  if (timeout < 0) throw UsageError("--collective-timeout must be >= 0 seconds");
  q.check();  // the values alone, before anything is loaded (OptionError: exit 2)
  const bool online = !vm.count("pool");
  const generators::SynthesizerOptions so = online ? read_online_options(vm, &q) : generators::SynthesizerOptions{};
  if (!online) q.generator_warmup = 0;
  const bool gen_clamp = read_switch(vm, "gen-clamp-pixels") && online;  // the value checked either way
  if (gen_clamp && !q.clamp_pixels) {
    throw UsageError("--gen-clamp-pixels on needs --clamp-pixels on: the generator would fit images the student never sees");
  }

  trainers::RunFolder run(get<std::string>(vm, "out"), q.resume);
  q.checkpoint = run.checkpoint();
  const std::string recipe_text = resolved_config(desc, vm);
  const Resumed resumed = q.resume ? check_resume(q.checkpoint, recipe_text, vm, &q) : Resumed{};
  auto comm = distributed::Communicator::create({timeout});
  const bool root = comm->rank() == 0;
  if (root && q.resume && resumed.world != comm->size()) {
    std::cout << "resuming a checkpoint of " << resumed.world << " process(es) on " << comm->size()
              << ": the data are re-sharded and the random streams differ, so the run will not end bit for bit "
                 "where an uninterrupted one would"
              << std::endl;
  }
  const trainers::LoadedModel teacher = trainers::load_model(get<std::string>(vm, "teacher"), read_overrides(vm));
  // The test set is read and checked against the teacher before any training, not after it.
  const std::optional<Dataset> test = load_eval_data(vm, teacher.meta);
  if (!resumed.calibrated_input) set_input_range(vm, teacher.norm(), &config);
  const models::ModelSpec spec = teacher.spec();
  Source source = load_source(vm, so, gen_clamp, q, teacher, spec, comm);
  models::Classifier student = models::build(spec, models::QuantFactory(config));
  ModelMeta meta = teacher.meta;
  meta.recipe = recipe_text;
  const trainers::CheckpointStudent write_student = [&](h5::File& file) {
    models::write_student(file, *student, config, meta);
  };
  if (root) {
    run.open(resumed.step);
    print_plan(spec, config, source, q, comm->size(), gen_clamp);
  }
  trainers::QuantizeData data;
  data.pool = source.pool ? &*source.pool : nullptr;
  data.norm = teacher.norm();
  data.synthesizer = source.synth.get();
  const auto on_step = [&](const trainers::QuantizeStep& r) {
    if (root) report_step(r, run, every, q.stop_after > 0);
  };
  const auto start = std::chrono::steady_clock::now();
  trainers::QuantizeResult result;
  try {
    result = trainers::quantize(*student, *teacher.model, data, q, write_student, comm, on_step);
  } catch (...) {
    run.flush();
    throw;
  }
  run.close();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (root) finish(result, run, config, q.steps, seconds, test ? &*test : nullptr, teacher, *student, common.json);
  return 0;
}

} // namespace zsq::cli
