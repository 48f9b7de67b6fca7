! ckpt.f90: the Fortran module of libckpt, the checkpoint library of ckptfs.
!
! The same calls and status codes as the C header ckpt.h, over the C ABI
! with iso_c_binding. Every call is an integer function returning
! CKPT_SUCCESS (0) or a negative CKPT_ERR_* code; ckpt_last_error() gives
! the calling thread's last message as a Fortran string.
!
! What differs from C, and only because Fortran is not C:
!   - names, paths and the job are ordinary character(len=*) values;
!     trailing blanks are dropped, and an empty (or all-blank) config is
!     the C NULL (the usual configuration search);
!   - ckpt_mem_protect() takes a type(c_ptr) (c_loc(array)) and counts of
!     any of the default or c_size_t integer kinds;
!   - ckpt_route_file(file, routed) fills the character variable ROUTED,
!     blank-padded; CKPT_ERR_TRUNCATED when the path is longer than
!     len(routed);
!   - ckpt_checkpoint_end() and ckpt_restart_end() take a logical or an
!     integer; ckpt_need_checkpoint() sets a logical or an integer;
!   - ckpt_strerror(code) and ckpt_last_error() return deferred-length
!     strings.
!
! The wrappers need this file's object code: either compile ckpt.f90 with
! the application, or link the installed libckpt_fortran.a (pkg-config
! ckpt-fortran). Link libckpt itself after it.
!
!   use ckpt
!   integer :: rc, v
!   rc = ckpt_init('', 'heat')
!   rc = ckpt_mem_protect(0, c_loc(h), size(h), c_sizeof(h(1,1)))
!   v  = ckpt_restart_test('heat', -1)
!   if (v >= 0) rc = ckpt_restart('heat', v)
!   rc = ckpt_checkpoint('heat', step)
!   if (rc /= CKPT_SUCCESS) print *, ckpt_last_error()
!   rc = ckpt_finalize()

module ckpt
  use, intrinsic :: iso_c_binding, only: c_int, c_size_t, c_char, c_ptr, &
       c_null_char, c_null_ptr, c_associated, c_f_pointer, c_loc
  implicit none
  private

  ! The ABI version these bindings were written for (ckpt.h).
  integer, parameter, public :: CKPT_VERSION_MAJOR = 0
  integer, parameter, public :: CKPT_VERSION_MINOR = 1
  integer, parameter, public :: CKPT_VERSION_PATCH = 0

  ! Status codes: the values of ckpt.h.
  integer, parameter, public :: CKPT_SUCCESS = 0
  integer, parameter, public :: CKPT_ERR_INVALID = -1
  integer, parameter, public :: CKPT_ERR_NOT_INIT = -2
  integer, parameter, public :: CKPT_ERR_STATE = -3
  integer, parameter, public :: CKPT_ERR_NOT_FOUND = -4
  integer, parameter, public :: CKPT_ERR_SIZE = -5
  integer, parameter, public :: CKPT_ERR_IO = -6
  integer, parameter, public :: CKPT_ERR_NOSPC = -7
  integer, parameter, public :: CKPT_ERR_CORRUPT = -8
  integer, parameter, public :: CKPT_ERR_CONFIG = -9
  integer, parameter, public :: CKPT_ERR_TIMEOUT = -10
  integer, parameter, public :: CKPT_ERR_TRUNCATED = -11
  integer, parameter, public :: CKPT_ERR_DAEMON = -12
  integer, parameter, public :: CKPT_ERR_INTERNAL = -13

  ! Longest path ckpt_route_file() may produce, including the C NUL.
  integer, parameter, public :: CKPT_MAX_PATH = 4096

  public :: ckpt_init, ckpt_init_rank, ckpt_finalize
  public :: ckpt_mem_protect, ckpt_mem_unprotect
  public :: ckpt_checkpoint, ckpt_restart_test, ckpt_restart
  public :: ckpt_checkpoint_begin, ckpt_route_file, ckpt_checkpoint_end
  public :: ckpt_restart_begin, ckpt_restart_end
  public :: ckpt_checkpoint_wait, ckpt_need_checkpoint
  public :: ckpt_strerror, ckpt_last_error

  interface ckpt_mem_protect
     module procedure ckpt_mem_protect_default, ckpt_mem_protect_size_t
  end interface ckpt_mem_protect

  interface ckpt_checkpoint_end
     module procedure ckpt_checkpoint_end_logical, ckpt_checkpoint_end_int
  end interface ckpt_checkpoint_end

  interface ckpt_restart_end
     module procedure ckpt_restart_end_logical, ckpt_restart_end_int
  end interface ckpt_restart_end

  interface ckpt_need_checkpoint
     module procedure ckpt_need_checkpoint_logical, ckpt_need_checkpoint_int
  end interface ckpt_need_checkpoint

  ! The C functions, one to one. Strings are NUL-terminated char arrays;
  ! the wrappers below make them from Fortran strings.
  interface
     function c_ckpt_init(config, job) bind(c, name='ckpt_init')
       import :: c_int, c_char, c_ptr
       type(c_ptr), value :: config
       character(kind=c_char), dimension(*), intent(in) :: job
       integer(c_int) :: c_ckpt_init
     end function c_ckpt_init

     function c_ckpt_init_rank(rank, size) bind(c, name='ckpt_init_rank')
       import :: c_int
       integer(c_int), value :: rank, size
       integer(c_int) :: c_ckpt_init_rank
     end function c_ckpt_init_rank

     function c_ckpt_finalize() bind(c, name='ckpt_finalize')
       import :: c_int
       integer(c_int) :: c_ckpt_finalize
     end function c_ckpt_finalize

     function c_ckpt_mem_protect(id, ptr, count, elem_size) &
          bind(c, name='ckpt_mem_protect')
       import :: c_int, c_ptr, c_size_t
       integer(c_int), value :: id
       type(c_ptr), value :: ptr
       integer(c_size_t), value :: count, elem_size
       integer(c_int) :: c_ckpt_mem_protect
     end function c_ckpt_mem_protect

     function c_ckpt_mem_unprotect(id) bind(c, name='ckpt_mem_unprotect')
       import :: c_int
       integer(c_int), value :: id
       integer(c_int) :: c_ckpt_mem_unprotect
     end function c_ckpt_mem_unprotect

     function c_ckpt_checkpoint(name, version) bind(c, name='ckpt_checkpoint')
       import :: c_int, c_char
       character(kind=c_char), dimension(*), intent(in) :: name
       integer(c_int), value :: version
       integer(c_int) :: c_ckpt_checkpoint
     end function c_ckpt_checkpoint

     function c_ckpt_restart_test(name, max_version) &
          bind(c, name='ckpt_restart_test')
       import :: c_int, c_char
       character(kind=c_char), dimension(*), intent(in) :: name
       integer(c_int), value :: max_version
       integer(c_int) :: c_ckpt_restart_test
     end function c_ckpt_restart_test

     function c_ckpt_restart(name, version) bind(c, name='ckpt_restart')
       import :: c_int, c_char
       character(kind=c_char), dimension(*), intent(in) :: name
       integer(c_int), value :: version
       integer(c_int) :: c_ckpt_restart
     end function c_ckpt_restart

     function c_ckpt_checkpoint_begin(name, version) &
          bind(c, name='ckpt_checkpoint_begin')
       import :: c_int, c_char
       character(kind=c_char), dimension(*), intent(in) :: name
       integer(c_int), value :: version
       integer(c_int) :: c_ckpt_checkpoint_begin
     end function c_ckpt_checkpoint_begin

     function c_ckpt_route_file(file, routed, len) bind(c, name='ckpt_route_file')
       import :: c_int, c_char, c_size_t
       character(kind=c_char), dimension(*), intent(in) :: file
       character(kind=c_char), dimension(*), intent(out) :: routed
       integer(c_size_t), value :: len
       integer(c_int) :: c_ckpt_route_file
     end function c_ckpt_route_file

     function c_ckpt_checkpoint_end(success) bind(c, name='ckpt_checkpoint_end')
       import :: c_int
       integer(c_int), value :: success
       integer(c_int) :: c_ckpt_checkpoint_end
     end function c_ckpt_checkpoint_end

     function c_ckpt_restart_begin(name, version) &
          bind(c, name='ckpt_restart_begin')
       import :: c_int, c_char
       character(kind=c_char), dimension(*), intent(in) :: name
       integer(c_int), value :: version
       integer(c_int) :: c_ckpt_restart_begin
     end function c_ckpt_restart_begin

     function c_ckpt_restart_end(success) bind(c, name='ckpt_restart_end')
       import :: c_int
       integer(c_int), value :: success
       integer(c_int) :: c_ckpt_restart_end
     end function c_ckpt_restart_end

     function c_ckpt_checkpoint_wait() bind(c, name='ckpt_checkpoint_wait')
       import :: c_int
       integer(c_int) :: c_ckpt_checkpoint_wait
     end function c_ckpt_checkpoint_wait

     function c_ckpt_need_checkpoint(flag) bind(c, name='ckpt_need_checkpoint')
       import :: c_int
       integer(c_int), intent(out) :: flag
       integer(c_int) :: c_ckpt_need_checkpoint
     end function c_ckpt_need_checkpoint

     function c_ckpt_strerror(code) bind(c, name='ckpt_strerror')
       import :: c_int, c_ptr
       integer(c_int), value :: code
       type(c_ptr) :: c_ckpt_strerror
     end function c_ckpt_strerror

     function c_ckpt_last_error() bind(c, name='ckpt_last_error')
       import :: c_ptr
       type(c_ptr) :: c_ckpt_last_error
     end function c_ckpt_last_error

     function c_strlen(s) bind(c, name='strlen')
       import :: c_ptr, c_size_t
       type(c_ptr), value :: s
       integer(c_size_t) :: c_strlen
     end function c_strlen
  end interface

contains

  ! --- helpers ---------------------------------------------------------------

  ! S without trailing blanks, NUL-terminated, for C.
  pure function c_str(s) result(c)
    character(len=*), intent(in) :: s
    character(kind=c_char, len=len_trim(s) + 1) :: c
    c = trim(s) // c_null_char
  end function c_str

  ! A copy of the NUL-terminated C string at P ('' for NULL).
  function f_str(p) result(s)
    type(c_ptr), intent(in) :: p
    character(len=:), allocatable :: s
    character(kind=c_char), dimension(:), pointer :: chars
    integer :: i, n
    if (.not. c_associated(p)) then
       s = ''
       return
    end if
    n = int(c_strlen(p))
    call c_f_pointer(p, chars, [n])
    allocate(character(len=n) :: s)
    do i = 1, n
       s(i:i) = chars(i)
    end do
  end function f_str

  ! --- life cycle ------------------------------------------------------------

  ! Start the library for JOB; CONFIG names a ckptfs configuration file, or
  ! is blank for the usual search ($CKPTFS_CONFIG, /etc/ckptfs.toml,
  ! defaults).
  integer function ckpt_init(config, job)
    character(len=*), intent(in) :: config, job
    character(kind=c_char, len=len_trim(config) + 1), target :: cfg
    if (len_trim(config) == 0) then
       ckpt_init = int(c_ckpt_init(c_null_ptr, c_str(job)))
    else
       cfg = c_str(config)
       ckpt_init = int(c_ckpt_init(c_loc(cfg), c_str(job)))
    end if
  end function ckpt_init

  ! This process's rank and the number of ranks; before ckpt_init().
  integer function ckpt_init_rank(rank, size)
    integer, intent(in) :: rank, size
    ckpt_init_rank = int(c_ckpt_init_rank(int(rank, c_int), int(size, c_int)))
  end function ckpt_init_rank

  integer function ckpt_finalize()
    ckpt_finalize = int(c_ckpt_finalize())
  end function ckpt_finalize

  ! --- memory-based checkpoints ----------------------------------------------

  ! Protect COUNT elements of ELEM_SIZE bytes at PTR (c_loc(array)) under ID.
  ! The array must stay allocated (and must have the target attribute)
  ! until ckpt_mem_unprotect(ID) or ckpt_finalize().
  integer function ckpt_mem_protect_default(id, ptr, count, elem_size)
    integer, intent(in) :: id
    type(c_ptr), intent(in) :: ptr
    integer, intent(in) :: count, elem_size
    if (count < 0 .or. elem_size < 0) then
       ! A negative count cannot become a size_t; let the library say so
       ! with its own message, via an impossible size.
       ckpt_mem_protect_default = int(c_ckpt_mem_protect(int(id, c_int), ptr, &
            huge(0_c_size_t), huge(0_c_size_t)))
    else
       ckpt_mem_protect_default = int(c_ckpt_mem_protect(int(id, c_int), ptr, &
            int(count, c_size_t), int(elem_size, c_size_t)))
    end if
  end function ckpt_mem_protect_default

  integer function ckpt_mem_protect_size_t(id, ptr, count, elem_size)
    integer, intent(in) :: id
    type(c_ptr), intent(in) :: ptr
    integer(c_size_t), intent(in) :: count, elem_size
    ckpt_mem_protect_size_t = int(c_ckpt_mem_protect(int(id, c_int), ptr, &
         count, elem_size))
  end function ckpt_mem_protect_size_t

  integer function ckpt_mem_unprotect(id)
    integer, intent(in) :: id
    ckpt_mem_unprotect = int(c_ckpt_mem_unprotect(int(id, c_int)))
  end function ckpt_mem_unprotect

  integer function ckpt_checkpoint(name, version)
    character(len=*), intent(in) :: name
    integer, intent(in) :: version
    ckpt_checkpoint = int(c_ckpt_checkpoint(c_str(name), int(version, c_int)))
  end function ckpt_checkpoint

  ! The newest complete version of NAME <= MAX_VERSION (negative: no
  ! bound), or CKPT_ERR_NOT_FOUND / another negative code.
  integer function ckpt_restart_test(name, max_version)
    character(len=*), intent(in) :: name
    integer, intent(in) :: max_version
    ckpt_restart_test = int(c_ckpt_restart_test(c_str(name), &
         int(max_version, c_int)))
  end function ckpt_restart_test

  integer function ckpt_restart(name, version)
    character(len=*), intent(in) :: name
    integer, intent(in) :: version
    ckpt_restart = int(c_ckpt_restart(c_str(name), int(version, c_int)))
  end function ckpt_restart

  ! --- file-based checkpoints ------------------------------------------------

  integer function ckpt_checkpoint_begin(name, version)
    character(len=*), intent(in) :: name
    integer, intent(in) :: version
    ckpt_checkpoint_begin = int(c_ckpt_checkpoint_begin(c_str(name), &
         int(version, c_int)))
  end function ckpt_checkpoint_begin

  ! The path to use for FILE, into ROUTED (blank-padded). The library sees
  ! a buffer of len(routed) + 1 bytes, so CKPT_ERR_TRUNCATED means exactly
  ! "longer than len(routed)".
  integer function ckpt_route_file(file, routed)
    character(len=*), intent(in) :: file
    character(len=*), intent(out) :: routed
    character(kind=c_char), dimension(len(routed) + 1) :: buf
    integer :: i
    buf = c_null_char
    ckpt_route_file = int(c_ckpt_route_file(c_str(file), buf, &
         int(size(buf), c_size_t)))
    routed = ''
    if (ckpt_route_file /= CKPT_SUCCESS) return
    do i = 1, len(routed)
       if (buf(i) == c_null_char) exit
       routed(i:i) = buf(i)
    end do
  end function ckpt_route_file

  integer function ckpt_checkpoint_end_logical(success)
    logical, intent(in) :: success
    ckpt_checkpoint_end_logical = int(c_ckpt_checkpoint_end( &
         merge(1_c_int, 0_c_int, success)))
  end function ckpt_checkpoint_end_logical

  integer function ckpt_checkpoint_end_int(success)
    integer, intent(in) :: success
    ckpt_checkpoint_end_int = int(c_ckpt_checkpoint_end( &
         merge(1_c_int, 0_c_int, success /= 0)))
  end function ckpt_checkpoint_end_int

  integer function ckpt_restart_begin(name, version)
    character(len=*), intent(in) :: name
    integer, intent(in) :: version
    ckpt_restart_begin = int(c_ckpt_restart_begin(c_str(name), &
         int(version, c_int)))
  end function ckpt_restart_begin

  integer function ckpt_restart_end_logical(success)
    logical, intent(in) :: success
    ckpt_restart_end_logical = int(c_ckpt_restart_end( &
         merge(1_c_int, 0_c_int, success)))
  end function ckpt_restart_end_logical

  integer function ckpt_restart_end_int(success)
    integer, intent(in) :: success
    ckpt_restart_end_int = int(c_ckpt_restart_end( &
         merge(1_c_int, 0_c_int, success /= 0)))
  end function ckpt_restart_end_int

  ! --- drain and scheduling --------------------------------------------------

  integer function ckpt_checkpoint_wait()
    ckpt_checkpoint_wait = int(c_ckpt_checkpoint_wait())
  end function ckpt_checkpoint_wait

  integer function ckpt_need_checkpoint_logical(flag)
    logical, intent(out) :: flag
    integer(c_int) :: f
    f = 0
    ckpt_need_checkpoint_logical = int(c_ckpt_need_checkpoint(f))
    flag = f /= 0
  end function ckpt_need_checkpoint_logical

  integer function ckpt_need_checkpoint_int(flag)
    integer, intent(out) :: flag
    integer(c_int) :: f
    f = 0
    ckpt_need_checkpoint_int = int(c_ckpt_need_checkpoint(f))
    flag = int(f)
  end function ckpt_need_checkpoint_int

  ! --- errors ----------------------------------------------------------------

  ! A description of CODE.
  function ckpt_strerror(code) result(s)
    integer, intent(in) :: code
    character(len=:), allocatable :: s
    s = f_str(c_ckpt_strerror(int(code, c_int)))
  end function ckpt_strerror

  ! The message of the calling thread's last failed call ('' when none).
  function ckpt_last_error() result(s)
    character(len=:), allocatable :: s
    s = f_str(c_ckpt_last_error())
  end function ckpt_last_error

end module ckpt
