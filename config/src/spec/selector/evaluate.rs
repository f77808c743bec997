//! Evaluating a parsed selector against a machine's facts, and the type rules of its fields.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expression {
    Any(Vec<Expression>),
    All(Vec<Expression>),
    Not(Box<Expression>),
    Condition(Condition),
}

impl Expression {
    pub(super) fn matches(&self, machine: &MachineFacts) -> bool {
        match self {
            Expression::Any(terms) => terms.iter().any(|term| term.matches(machine)),
            Expression::All(terms) => terms.iter().all(|term| term.matches(machine)),
            Expression::Not(inner) => !inner.matches(machine),
            Expression::Condition(condition) => condition.matches(machine),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Condition {
    pub(super) field: Field,
    pub(super) test: Test,
}

impl Condition {
    pub(super) fn matches(&self, machine: &MachineFacts) -> bool {
        match &self.field {
            Field::Gpu(field) => {
                !machine.gpus.is_empty()
                    && machine.gpus.iter().all(|gpu| {
                        let fact = match field {
                            GpuField::Compute => gpu.compute_capability.map(Value::ComputeCapability),
                            GpuField::Memory => gpu
                                .memory_total_bytes
                                .map(|bytes| Value::Gibibytes(bytes as f64 / BYTES_PER_GIB)),
                            GpuField::Name => gpu.name.as_deref().map(|name| Value::Text(name.into())),
                        };
                        fact.is_some_and(|fact| self.test.holds(&fact))
                    })
            }
            Field::GpuCount => {
                self.test.holds(&Value::Count(u64::try_from(machine.gpus.len()).unwrap_or(u64::MAX)))
            }
            Field::DriverCuda => {
                machine.cuda_driver_version.is_some_and(|cuda| self.test.holds(&Value::CudaVersion(cuda)))
            }
            Field::DriverVersion => machine
                .driver_version
                .as_deref()
                .and_then(parse_version)
                .is_some_and(|version| self.test.holds(&Value::DriverVersion(version))),
            Field::HostOs => self.text_holds(machine.os.as_deref()),
            Field::HostArch => self.text_holds(machine.arch.as_deref()),
            Field::MachineId => self.text_holds(Some(&machine.id)),
            Field::MachineHostname => self.text_holds(Some(&machine.hostname)),
            Field::Label(key) => self.text_holds(machine.labels.get(key).map(String::as_str)),
            Field::EnvName => self.text_holds(machine.software.environment.as_deref()),
            Field::EnvRevision => machine
                .software
                .revision
                .is_some_and(|revision| self.test.holds(&Value::Count(u64::from(revision)))),
            Field::EnvTorch => self.text_holds(machine.software.torch.as_deref()),
            Field::EnvCuda => self.text_holds(machine.software.cuda()),
            Field::EnvPython => self.text_holds(machine.software.python.as_deref()),
            Field::Phase => self.text_holds(machine.software.phase.map(|phase| phase.as_str())),
            Field::Drift => self.test.holds(&Value::Boolean(!machine.software.drift.is_empty())),
            Field::Optimization(name) => {
                self.test.holds(&Value::Text(machine.software.optimization(name).as_str().into()))
            }
        }
    }

    pub(super) fn text_holds(&self, value: Option<&str>) -> bool {
        match value {
            Some(text) => self.test.holds(&Value::Text(text.into())),
            // A missing label equals nothing, so "is not X" is true of it.
            None => matches!(self.test, Test::Compare(Operator::Ne, _)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Field {
    Gpu(GpuField),
    GpuCount,
    DriverCuda,
    DriverVersion,
    HostOs,
    HostArch,
    MachineId,
    MachineHostname,
    Label(String),
    EnvName,
    EnvRevision,
    EnvTorch,
    EnvCuda,
    EnvPython,
    Phase,
    Drift,
    Optimization(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GpuField {
    Compute,
    Memory,
    Name,
}

pub(super) const FIELD_NAMES: [(&str, Field); 17] = [
    ("gpu.compute", Field::Gpu(GpuField::Compute)),
    ("gpu.memory", Field::Gpu(GpuField::Memory)),
    ("gpu.name", Field::Gpu(GpuField::Name)),
    ("gpu.count", Field::GpuCount),
    ("driver.cuda", Field::DriverCuda),
    ("driver.version", Field::DriverVersion),
    ("host.os", Field::HostOs),
    ("host.arch", Field::HostArch),
    ("machine.id", Field::MachineId),
    ("machine.hostname", Field::MachineHostname),
    ("env.name", Field::EnvName),
    ("env.revision", Field::EnvRevision),
    ("env.torch", Field::EnvTorch),
    ("env.cuda", Field::EnvCuda),
    ("env.python", Field::EnvPython),
    ("phase", Field::Phase),
    ("drift", Field::Drift),
];

/// What kind of value a field holds, which decides the operators and literals allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    ComputeCapability,
    Gibibytes,
    Count,
    CudaVersion,
    DriverVersion,
    /// A machine's phase (`Phase::named`).
    Phase,
    /// `opt.NAME`: an outcome (`OptimizationOutcomeKind::named`).
    Outcome,
    Boolean,
}

impl Field {
    pub(super) fn kind(&self) -> Kind {
        match self {
            Field::Gpu(GpuField::Compute) => Kind::ComputeCapability,
            Field::Gpu(GpuField::Memory) => Kind::Gibibytes,
            Field::GpuCount => Kind::Count,
            Field::DriverCuda => Kind::CudaVersion,
            Field::DriverVersion => Kind::DriverVersion,
            Field::EnvRevision => Kind::Count,
            Field::Phase => Kind::Phase,
            Field::Optimization(_) => Kind::Outcome,
            Field::Drift => Kind::Boolean,
            Field::EnvName | Field::EnvTorch | Field::EnvCuda | Field::EnvPython => Kind::Text,
            Field::Gpu(GpuField::Name)
            | Field::HostOs
            | Field::HostArch
            | Field::MachineId
            | Field::MachineHostname
            | Field::Label(_) => Kind::Text,
        }
    }

    /// The field a word names; `offset` is where the word starts, for errors.
    /// `software`: whether the fields of what runs on a machine are allowed (queries
    /// yes, specs no).
    pub(super) fn named(word: &str, offset: usize, software: bool) -> Result<Field, SelectorError> {
        let field = match FIELD_NAMES.iter().find(|(name, _)| *name == word) {
            Some((_, field)) => field.clone(),
            None => match word.strip_prefix("opt.") {
                Some(name) if is_optimization_name(name) => Field::Optimization(name.to_owned()),
                Some(_) => {
                    return Err(SelectorError::new(
                        offset,
                        format!(
                            "`{word}` is not an optimisation field: write opt. and the optimisation's name \
                             as the spec has it, e.g. opt.sageattention"
                        ),
                    ));
                }
                None => Field::label_named(word, offset)?,
            },
        };
        if !software && field.is_software() {
            return Err(SelectorError::new(
                offset,
                format!(
                    "`{word}` is what runs on a machine, which a spec's selector cannot depend on (the \
                     plan would change what it matches): select on hardware and labels here, and use \
                     {word} with comfyfleet machines --where or comfyfleet report"
                ),
            ));
        }
        Ok(field)
    }

    /// A field of what runs on the machine rather than of the machine itself.
    pub(super) fn is_software(&self) -> bool {
        matches!(
            self,
            Field::EnvName
                | Field::EnvRevision
                | Field::EnvTorch
                | Field::EnvCuda
                | Field::EnvPython
                | Field::Phase
                | Field::Drift
                | Field::Optimization(_)
        )
    }

    pub(super) fn label_named(word: &str, offset: usize) -> Result<Field, SelectorError> {
        if let Some(key) = word.strip_prefix("labels.")
            && !key.is_empty()
        {
            return Ok(Field::Label(key.to_owned()));
        }
        let group = word.split_once('.').map_or(word, |(group, _)| group);
        let known = match group {
            "gpu" => "the gpu fields are gpu.compute, gpu.memory, gpu.name and gpu.count",
            "driver" => "the driver fields are driver.cuda and driver.version",
            "host" => "the host fields are host.os and host.arch",
            "machine" => "the machine fields are machine.id and machine.hostname",
            "labels" => "write labels.KEY, e.g. labels.pool",
            "env" => "the env fields are env.name, env.revision, env.torch, env.cuda and env.python",
            _ if word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                return Ok(Field::Label(word.to_owned()));
            }
            _ => {
                return Err(SelectorError::new(
                    offset,
                    format!(
                        "expected a field such as gpu.compute or a label name, found `{word}`: \
                         put the field on the left, e.g. gpu.compute >= 8.0"
                    ),
                ));
            }
        };
        Err(SelectorError::new(
            offset,
            format!("`{word}` is not a field: {known} (for a label with this name, write labels.{word})"),
        ))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, FIELD_NAMES.iter().find(|(_, field)| field == self)) {
            (Field::Label(key), _) => write!(f, "labels.{key}"),
            (Field::Optimization(name), _) => write!(f, "opt.{name}"),
            (_, Some((name, _))) => f.write_str(name),
            (_, None) => write!(f, "{self:?}"),
        }
    }
}

impl Kind {
    /// Whether `<`, `<=`, `>` and `>=` apply.
    pub(super) fn is_ordered(self) -> bool {
        !matches!(self, Kind::Text | Kind::Phase | Kind::Outcome | Kind::Boolean)
    }

    pub(super) fn hint(self) -> &'static str {
        match self {
            Kind::Text => "write a quoted string such as \"render-a\"",
            Kind::ComputeCapability => "write a compute capability such as 8.9",
            Kind::Gibibytes => "write a size in GiB such as 24 or 79.5",
            Kind::Count => "write a whole number such as 8",
            Kind::CudaVersion => "write a CUDA version such as 12.8",
            Kind::DriverVersion => "write a driver version such as 570 or 570.133.07",
            Kind::Phase => "write a phase: idle, preparing, prepared, activating, active or failed",
            Kind::Outcome => "write an outcome: verified, failed, skipped, pending or absent",
            Kind::Boolean => "write true or false",
        }
    }

    /// The literal a bare word stands for, if it is one of this kind.
    pub(super) fn literal(self, word: &str) -> Option<Literal> {
        match self {
            Kind::Text => Some(Value::Text(word.to_owned().into())),
            Kind::ComputeCapability => word.parse().ok().map(Value::ComputeCapability),
            Kind::CudaVersion => word.parse().ok().map(Value::CudaVersion),
            Kind::Count => word.parse().ok().filter(|_| is_digits(word)).map(Value::Count),
            Kind::Gibibytes => {
                let (whole, fraction) = word.split_once('.').unwrap_or((word, "0"));
                let decimal = is_digits(whole) && is_digits(fraction);
                word.parse().ok().filter(|size: &f64| decimal && size.is_finite()).map(Value::Gibibytes)
            }
            Kind::DriverVersion => parse_version(word).map(Value::DriverVersion),
            Kind::Phase => Phase::named(word).map(|phase| Value::Text(phase.as_str().into())),
            Kind::Outcome => {
                OptimizationOutcomeKind::named(word).map(|outcome| Value::Text(outcome.as_str().into()))
            }
            Kind::Boolean => match word {
                "true" => Some(Value::Boolean(true)),
                "false" => Some(Value::Boolean(false)),
                _ => None,
            },
        }
    }
}

/// A value of one [`Kind`]: borrowed when a machine reports it, owned when the selector
/// holds it (a [`Literal`]).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value<'a> {
    Text(Cow<'a, str>),
    ComputeCapability(ComputeCapability),
    Gibibytes(f64),
    Count(u64),
    CudaVersion(CudaVersion),
    DriverVersion(Vec<u64>),
    Boolean(bool),
}

pub(super) type Literal = Value<'static>;

/// `None` for values of different kinds, which type checking rules out.
pub(super) fn compare(fact: &Value<'_>, literal: &Literal) -> Option<Ordering> {
    match (fact, literal) {
        (Value::Text(fact), Value::Text(literal)) => Some(fact.as_ref().cmp(literal.as_ref())),
        (Value::ComputeCapability(fact), Value::ComputeCapability(literal)) => Some(fact.cmp(literal)),
        (Value::Gibibytes(fact), Value::Gibibytes(literal)) => fact.partial_cmp(literal),
        (Value::Count(fact), Value::Count(literal)) => Some(fact.cmp(literal)),
        (Value::CudaVersion(fact), Value::CudaVersion(literal)) => Some(fact.cmp(literal)),
        (Value::DriverVersion(fact), Value::DriverVersion(literal)) => Some(compare_versions(fact, literal)),
        (Value::Boolean(fact), Value::Boolean(literal)) => Some(fact.cmp(literal)),
        _ => None,
    }
}

/// Dotted numeric versions, number by number; a missing number counts as 0.
pub(super) fn compare_versions(left: &[u64], right: &[u64]) -> Ordering {
    (0..left.len().max(right.len()))
        .map(|at| left.get(at).copied().unwrap_or(0).cmp(&right.get(at).copied().unwrap_or(0)))
        .find(|ordering| ordering.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// `570.133.07` → `[570, 133, 7]`; `None` for anything that is not dotted numbers.
pub(super) fn parse_version(text: &str) -> Option<Vec<u64>> {
    text.trim().split('.').map(|part| part.parse().ok().filter(|_| is_digits(part))).collect()
}

/// An optimisation's name as a spec may write it (see `spec::names`).
fn is_optimization_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

/// Plain decimal digits, at least one (`str::parse` would also take a leading `+`).
pub(super) fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Operator {
    pub(super) fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Operator::Eq => ordering.is_eq(),
            Operator::Ne => ordering.is_ne(),
            Operator::Lt => ordering.is_lt(),
            Operator::Le => ordering.is_le(),
            Operator::Gt => ordering.is_gt(),
            Operator::Ge => ordering.is_ge(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Test {
    Compare(Operator, Literal),
    In(Vec<Literal>),
    Contains(String),
}

impl Test {
    pub(super) fn holds(&self, fact: &Value<'_>) -> bool {
        match self {
            Test::Compare(operator, literal) => compare(fact, literal).is_some_and(|o| operator.accepts(o)),
            Test::In(literals) => {
                literals.iter().any(|literal| compare(fact, literal) == Some(Ordering::Equal))
            }
            Test::Contains(needle) => matches!(fact, Value::Text(text) if text.contains(needle.as_str())),
        }
    }
}
